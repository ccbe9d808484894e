package index

import (
	"errors"
	"fmt"
	"slices"
	"testing"
)

// usersModel is the naive reference for Users: maps and slices, no cleverness.
type usersModel struct {
	byKey   map[modelKey]UserID
	keys    map[UserID][]modelKey // attach order
	deleted map[UserID]bool
	next    UserID
}

type modelKey struct {
	kind Kind
	key  string
}

func newUsersModel() *usersModel {
	return &usersModel{
		byKey:   make(map[modelKey]UserID),
		keys:    make(map[UserID][]modelKey),
		deleted: make(map[UserID]bool),
	}
}

func (m *usersModel) live(id UserID) bool { return id < m.next && !m.deleted[id] }

func (m *usersModel) create() UserID {
	id := m.next
	m.next++
	return id
}

func (m *usersModel) attach(id UserID, k modelKey) error {
	if !m.live(id) {
		return ErrNoUser
	}
	if _, ok := m.byKey[k]; ok {
		return ErrKeyHeld
	}
	m.byKey[k] = id
	m.keys[id] = append(m.keys[id], k)
	return nil
}

func (m *usersModel) detach(k modelKey) (UserID, bool) {
	id, ok := m.byKey[k]
	if !ok {
		return NoUser, false
	}
	delete(m.byKey, k)
	m.keys[id] = slices.DeleteFunc(m.keys[id], func(x modelKey) bool { return x == k })
	return id, true
}

func (m *usersModel) delete(id UserID) bool {
	if !m.live(id) {
		return false
	}
	for _, k := range m.keys[id] {
		delete(m.byKey, k)
	}
	delete(m.keys, id)
	m.deleted[id] = true
	return true
}

func (m *usersModel) anonymous(id UserID) bool {
	if !m.live(id) {
		return false
	}
	for _, k := range m.keys[id] {
		if k.kind != KindDevice {
			return false
		}
	}
	return true
}

// identifiers returns id's keys in Identifiers order.
func (m *usersModel) identifiers(id UserID) []modelKey {
	var out []modelKey
	for _, kind := range []Kind{KindExternal, KindAlias, KindDevice} {
		for _, k := range m.keys[id] {
			if k.kind == kind {
				out = append(out, k)
			}
		}
	}
	return out
}

// compare checks every observable of u against m; it returns the first difference.
func (m *usersModel) compare(u *Users) error {
	if u.NextID() != m.next {
		return fmt.Errorf("NextID %d, model %d", u.NextID(), m.next)
	}
	nLive := 0
	for id := UserID(0); id < m.next+2; id++ {
		if m.live(id) {
			nLive++
		}
		if got, want := u.Deleted(id), m.deleted[id]; got != want {
			return fmt.Errorf("Deleted(%d) = %v, model %v", id, got, want)
		}
		if got, want := u.Anonymous(id), m.anonymous(id); got != want {
			return fmt.Errorf("Anonymous(%d) = %v, model %v", id, got, want)
		}
		var got []modelKey
		u.Identifiers(id, func(kind Kind, key []byte) { got = append(got, modelKey{kind, string(key)}) })
		if want := m.identifiers(id); !slices.Equal(got, want) {
			return fmt.Errorf("Identifiers(%d) = %v, model %v", id, got, want)
		}
		if got, want := u.Live().Contains(uint32(id)), m.live(id); got != want {
			return fmt.Errorf("Live().Contains(%d) = %v, model %v", id, got, want)
		}
	}
	if u.Len() != nLive {
		return fmt.Errorf("Len %d, model %d", u.Len(), nLive)
	}
	for k, want := range m.byKey {
		if got := u.Resolve(k.kind, []byte(k.key)); got != want {
			return fmt.Errorf("Resolve(%v, %q) = %d, model %d", k.kind, k.key, got, want)
		}
	}
	return u.Check()
}

// modelOp applies one operation, chosen by op and arg, to both u and m and compares the
// results. keySpace bounds the keys so that ops collide often.
func modelOp(t testing.TB, u *Users, m *usersModel, op, a, b byte, keySpace int) {
	t.Helper()
	kind := Kind(b%3) + 1
	key := fmt.Sprintf("k%d", int(a)%keySpace)
	if b&0x80 != 0 {
		key += "-long-" + string(make([]byte, 60)) // forces the 3-byte entry header
	}
	pick := func() UserID {
		if m.next == 0 {
			return UserID(a)
		}
		return UserID(int(a)*7+int(b)) % (m.next + 1) // sometimes one past the end
	}
	switch op % 8 {
	case 0, 1:
		if got, want := u.Create(), m.create(); got != want {
			t.Fatalf("Create = %d, model %d", got, want)
		}
	case 2, 3, 4:
		id := pick()
		err := u.Attach(id, kind, []byte(key))
		want := m.attach(id, modelKey{kind, key})
		if !errors.Is(err, want) && (err != nil || want != nil) {
			t.Fatalf("Attach(%d, %v, %q) = %v, model %v", id, kind, key, err, want)
		}
	case 5:
		id, ok := u.Detach(kind, []byte(key))
		wid, wok := m.detach(modelKey{kind, key})
		if id != wid || ok != wok {
			t.Fatalf("Detach(%v, %q) = %d %v, model %d %v", kind, key, id, ok, wid, wok)
		}
	case 6:
		id := pick()
		if got, want := u.Delete(id), m.delete(id); got != want {
			t.Fatalf("Delete(%d) = %v, model %v", id, got, want)
		}
	case 7:
		keys := [][]byte{[]byte(key), []byte("k0"), []byte("absent")}
		ids := u.ResolveMany(kind, keys, nil)
		for i, k := range keys {
			want, ok := m.byKey[modelKey{kind, string(k)}]
			if !ok {
				want = NoUser
			}
			if ids[i] != want {
				t.Fatalf("ResolveMany(%v)[%q] = %d, model %d", kind, k, ids[i], want)
			}
		}
		u.Publish()
	}
}
