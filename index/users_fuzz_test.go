package index

import (
	"bytes"
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
