package store

import (
	"context"
	"time"

	"github.com/gocoll/gocoll/core"
)

// The helpers below work on any core.Store and take the one-round-trip
// path when the store is a *Client (or anything else with the method), so
// code written against core.Store runs on the in-process memstore in tests
// and on the TCP store in jobs.

// Prefix returns a view of s with every key prefixed. For a *Client it is
// c.WithPrefix, which keeps Wait, MultiGet and the rest; otherwise it is
// core.WithPrefix.
func Prefix(s core.Store, prefix string) core.Store {
	if c, ok := s.(*Client); ok {
		return c.WithPrefix(prefix)
	}
	return core.WithPrefix(s, prefix)
}

// MultiGetFrom waits until every key exists in s and returns the values.
func MultiGetFrom(ctx context.Context, s core.Store, keys ...string) ([][]byte, error) {
	if m, ok := s.(interface {
		MultiGet(context.Context, ...string) ([][]byte, error)
	}); ok {
		return m.MultiGet(ctx, keys...)
	}
	vs := make([][]byte, len(keys))
	for i, k := range keys {
		v, err := s.Get(ctx, k)
		if err != nil {
			return nil, err
		}
		vs[i] = v
	}
	return vs, nil
}

// WaitFor returns once every key exists in s, or ctx's error.
func WaitFor(ctx context.Context, s core.Store, keys ...string) error {
	if w, ok := s.(interface {
		Wait(context.Context, ...string) error
	}); ok {
		return w.Wait(ctx, keys...)
	}
	for _, k := range keys {
		if _, err := s.Get(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

// MultiSetIn sets keys[i] to values[i], atomically where s supports it.
func MultiSetIn(ctx context.Context, s core.Store, keys []string, values [][]byte) error {
	if m, ok := s.(interface {
		MultiSet(context.Context, []string, [][]byte) error
	}); ok {
		return m.MultiSet(ctx, keys, values)
	}
	for i, k := range keys {
		if err := s.Set(ctx, k, values[i]); err != nil {
			return err
		}
	}
	return nil
}

// probeWait is how long Missing lets a plain core.Store's Get look for a
// key that should already be there.
const probeWait = 100 * time.Millisecond

// Missing returns the indexes of keys that do not exist in s now. It is
// for error reports after a wait timed out, so it uses a fresh context:
// the caller's has usually ended. Keys it cannot check count as missing.
func Missing(ctx context.Context, s core.Store, keys ...string) []int {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	var miss []int
	t, hasTry := s.(interface {
		TryGet(context.Context, string) ([]byte, bool, error)
	})
	for i, k := range keys {
		var ok bool
		if hasTry {
			_, ok, _ = t.TryGet(ctx, k)
		} else {
			pctx, pcancel := context.WithTimeout(ctx, probeWait)
			_, err := s.Get(pctx, k)
			pcancel()
			ok = err == nil
		}
		if !ok {
			miss = append(miss, i)
		}
	}
	return miss
}

// MultiGetGuardedFrom is MultiGetFrom that ends early, returning the
// missing guards of missing keys, where guards[i] vouches for keys[i]
// (see Client.MultiGetGuarded). On a store without guarded waits it is
// MultiGetFrom: lost is always nil and a dead peer shows as a timeout.
func MultiGetGuardedFrom(ctx context.Context, s core.Store, keys, guards []string) (values [][]byte, lost []string, err error) {
	if g, ok := s.(interface {
		MultiGetGuarded(context.Context, []string, []string) ([][]byte, []string, error)
	}); ok && len(guards) > 0 {
		return g.MultiGetGuarded(ctx, keys, guards)
	}
	values, err = MultiGetFrom(ctx, s, keys...)
	return values, nil, err
}

// SetEphemeralIn sets an ephemeral key where s supports it (see
// Client.SetEphemeral) and reports whether it did; it sets nothing
// otherwise.
func SetEphemeralIn(ctx context.Context, s core.Store, key string, value []byte) (bool, error) {
	if e, ok := s.(interface {
		SetEphemeral(context.Context, string, []byte) error
	}); ok {
		return true, e.SetEphemeral(ctx, key, value)
	}
	return false, nil
}
