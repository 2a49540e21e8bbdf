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
