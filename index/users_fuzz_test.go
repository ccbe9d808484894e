package index

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

// FuzzUsersOps drives Users with operations decoded from the input, three bytes an
// operation, against the map model, with a weak or a real hash chosen by the first byte.
func FuzzUsersOps(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 2, 1, 1, 2, 1, 2, 5, 1, 1, 6, 0, 0, 7, 1, 1})
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 2, 3, 0, 2, 4, 1, 2, 5, 2, 5, 3, 0, 5, 4, 1, 6, 1, 0, 7, 3, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 || len(data) > 3*2000 {
			return
		}
		var opts Options
		if data[0]&1 != 0 {
			opts.Hash = weakHashes["and7"]
		}
		u := NewUsers(opts)
		m := newUsersModel()
		for d := data[1:]; len(d) >= 3; d = d[3:] {
			modelOp(t, u, m, d[0], d[1], d[2], 16)
		}
		u.Publish()
		if err := m.compare(u); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzAliasKey checks that SplitAlias undoes AliasKey for NUL-free names.
func FuzzAliasKey(f *testing.F) {
	f.Add([]byte("email"), []byte("a@example.com"))
	f.Add([]byte(""), []byte(""))
	f.Fuzz(func(t *testing.T, name, label []byte) {
		if bytes.IndexByte(name, 0) >= 0 {
			return // NUL is forbidden in identifiers
		}
		k := AliasKey(nil, name, label)
		n, l := SplitAlias(k)
		if !bytes.Equal(n, name) || !bytes.Equal(l, label) {
			t.Fatalf("SplitAlias(AliasKey(%q, %q)) = %q, %q", name, label, n, l)
		}
	})
}

// FuzzLoadImage damages one array of a valid image, whose table is version 2 or
// version 1, and loads it: a damaged image is refused with ErrImage or loads into a
// Users whose Check, resolves and Close never panic, and a streaming check never
// panics either.
func FuzzLoadImage(f *testing.F) {
	u := NewUsers(Options{Seed: 7})
	var keys [][]byte
	for i := range 300 {
		id := u.Create()
		k := fmt.Appendf(nil, "user-%d", i)
		keys = append(keys, k)
		if err := u.Attach(id, Kind(i%3)+1, k); err != nil {
			f.Fatal(err)
		}
		if i%7 == 0 {
			u.Detach(Kind(i%3)+1, k)
		}
		if i%11 == 0 {
			u.Delete(id)
		}
	}
	u.Publish()
	h, arrays := u.Image()
	v1tab, v1lines := v1Table(u)
	for a := range NumArrays {
		f.Add(uint8(a), uint32(70), []byte{0xff}, false)
		f.Add(uint8(a), uint32(3), []byte{1, 2, 3, 4}, true)
	}
	f.Fuzz(func(t *testing.T, a uint8, off uint32, val []byte, v1 bool) {
		hh := h
		var cp [NumArrays][]byte
		for i := range arrays {
			cp[i] = bytes.Clone(arrays[i])
		}
		if v1 {
			cp[ArrayTable-1], hh.Buckets, hh.Tombs = bytes.Clone(v1tab), v1lines, 0
		}
		if arr := cp[a%NumArrays]; len(arr) > 0 {
			copy(arr[int(off%uint32(len(arr))):], val)
		}
		// The check gives one verdict whether an array comes whole or in pieces
		// (entries cut across Writes).
		piece := 1 + int(off%97)
		for i := range cp {
			c := NewArrayCheck(hh, Array(i+1))
			c.Write(cp[i])
			whole := c.Close()
			c = NewArrayCheck(hh, Array(i+1))
			for b := cp[i]; len(b) > 0; b = b[min(piece, len(b)):] {
				c.Write(b[:min(piece, len(b))])
			}
			if parts := c.Close(); (whole == nil) != (parts == nil) {
				t.Fatalf("%v: whole %v, in pieces of %d %v", Array(i+1), whole, piece, parts)
			}
		}
		v, err := loadImage(hh, cp)
		if err != nil {
			if !errors.Is(err, ErrImage) {
				t.Fatalf("load: %v, want ErrImage", err)
			}
			return
		}
		_ = v.Check()
		for kind := KindExternal; kind <= KindDevice; kind++ {
			v.ResolveMany(kind, keys, nil)
		}
		v.Close()
	})
}
