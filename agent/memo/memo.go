// Package memo keeps what was built from a list, and builds it again only when the list changes:
// the datapaths' renderers keep each service's endpoint rules this way.
package memo

import "slices"

// Built is a value built from a list, kept while the list stays equal. The zero value holds
// nothing.
type Built[E comparable, V any] struct {
	from  []E
	value V
	ok    bool
}

// Get returns the value built from list: the kept one when list equals the one it was built
// from, otherwise build() (then kept).
func (b *Built[E, V]) Get(list []E, build func() V) V {
	if !b.ok || !slices.Equal(b.from, list) {
		b.from, b.value, b.ok = slices.Clone(list), build(), true
	}
	return b.value
}

// Same reports whether a and b are the same list: the same length and the same first element
// (one slice kept and handed on), whose elements need no comparing.
func Same[E any](a, b []E) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// Equal reports whether a and b hold equal elements, without comparing them when they are the
// same list.
func Equal[E comparable](a, b []E) bool { return Same(a, b) || slices.Equal(a, b) }

// Changed compares next with last element by element, each by its id and its list: ok is false
// when they differ in length, in an element's id, or in whether an element's list is empty;
// otherwise changed lists the indices of the elements whose lists differ (the renderers rebuild
// those only).
func Changed[S any, K, E comparable](next, last []S, id func(S) K, list func(S) []E) (changed []int, ok bool) {
	if len(next) != len(last) {
		return nil, false
	}
	for i, s := range next {
		p := last[i]
		if id(s) != id(p) || (len(list(s)) == 0) != (len(list(p)) == 0) {
			return nil, false
		}
		if !Equal(list(s), list(p)) {
			changed = append(changed, i)
		}
	}
	return changed, true
}
