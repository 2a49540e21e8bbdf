package memo

import (
	"slices"
	"testing"
)

func TestBuilt(t *testing.T) {
	var b Built[int, string]
	builds := 0
	build := func(s string) func() string { return func() string { builds++; return s } }
	steps := []struct {
		list       []int
		value      string
		want       string
		wantBuilds int
	}{
		{nil, "empty", "empty", 1}, // nothing kept yet: built
		{nil, "again", "empty", 1}, // equal (empty) list: kept
		{[]int{1, 2}, "a", "a", 2}, // changed: built
		{[]int{1, 2}, "b", "a", 2}, // equal: kept
		{[]int{2, 1}, "c", "c", 3}, // order matters
		{[]int{2}, "d", "d", 4},    // shorter
		{[]int{}, "e", "e", 5},     // emptied
	}
	for i, s := range steps {
		if got := b.Get(s.list, build(s.value)); got != s.want || builds != s.wantBuilds {
			t.Errorf("step %d: got %q after %d builds, want %q after %d", i, got, builds, s.want, s.wantBuilds)
		}
	}
}

func TestSameAndEqual(t *testing.T) {
	a := []int{1, 2, 3}
	b := slices.Clone(a)
	tests := []struct {
		name        string
		x, y        []int
		same, equal bool
	}{
		{"the same list", a, a, true, true},
		{"a copy", a, b, false, true},
		{"a shorter view", a, a[:2], false, false},
		{"both empty", nil, []int{}, true, true},
		{"another value", a, []int{1, 2, 4}, false, false},
	}
	for _, tc := range tests {
		if got := Same(tc.x, tc.y); got != tc.same {
			t.Errorf("%s: Same = %v, want %v", tc.name, got, tc.same)
		}
		if got := Equal(tc.x, tc.y); got != tc.equal {
			t.Errorf("%s: Equal = %v, want %v", tc.name, got, tc.equal)
		}
	}
}

func TestChanged(t *testing.T) {
	type svc struct {
		id   string
		list []int
	}
	id := func(s svc) string { return s.id }
	list := func(s svc) []int { return s.list }
	shared := []int{1, 2}
	last := []svc{{"a", shared}, {"b", []int{3}}, {"c", nil}}
	tests := []struct {
		name    string
		next    []svc
		changed []int
		ok      bool
	}{
		{"the same", []svc{{"a", shared}, {"b", []int{3}}, {"c", nil}}, nil, true},
		{"one list changed", []svc{{"a", shared}, {"b", []int{4}}, {"c", nil}}, []int{1}, true},
		{"an element more", append(slices.Clone(last), svc{"d", nil}), nil, false},
		{"another id", []svc{{"a", shared}, {"x", []int{3}}, {"c", nil}}, nil, false},
		{"a list emptied", []svc{{"a", nil}, {"b", []int{3}}, {"c", nil}}, nil, false},
		{"a list filled", []svc{{"a", shared}, {"b", []int{3}}, {"c", []int{5}}}, nil, false},
	}
	for _, tc := range tests {
		changed, ok := Changed(tc.next, last, id, list)
		if ok != tc.ok || !slices.Equal(changed, tc.changed) {
			t.Errorf("%s: Changed = %v, %v; want %v, %v", tc.name, changed, ok, tc.changed, tc.ok)
		}
	}
}
