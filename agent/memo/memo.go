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
