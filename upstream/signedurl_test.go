package upstream

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSignedURLResolvesOnceForEveryone(t *testing.T) {
	var resolves atomic.Int32
	s := &SignedURL{Resolve: func(context.Context) (*url.URL, error) {
		n := resolves.Add(1)
		return url.Parse(fmt.Sprintf("https://cdn.test/blob?sig=%d", n))
	}}
	ctx := context.Background()

	// Many pieces at once: one resolve.
	var wg sync.WaitGroup
	gens := make([]int, 16)
	for i := range gens {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u, gen, err := s.Get(ctx)
			assert.NoError(t, err)
			assert.Equal(t, "sig=1", u.RawQuery)
			gens[i] = gen
		}()
	}
	wg.Wait()
	assert.EqualValues(t, 1, resolves.Load())

	// The first piece refused renews; a later one refused the same URL
	// gets the renewed URL, not a third.
	u, gen, err := s.Renew(ctx, gens[0])
	require.NoError(t, err)
	assert.Equal(t, "sig=2", u.RawQuery)
	u2, gen2, err := s.Renew(ctx, gens[1])
	require.NoError(t, err)
	assert.Equal(t, u, u2)
	assert.Equal(t, gen, gen2)
	assert.EqualValues(t, 2, resolves.Load())

	// The renewed URL refused in turn: resolved again.
	u, _, err = s.Renew(ctx, gen)
	require.NoError(t, err)
	assert.Equal(t, "sig=3", u.RawQuery)
}

func TestSignedURLResolveErrorIsNotKept(t *testing.T) {
	fail := true
	s := &SignedURL{Resolve: func(context.Context) (*url.URL, error) {
		if fail {
			return nil, fmt.Errorf("hub down")
		}
		return url.Parse("https://cdn.test/blob")
	}}
	_, _, err := s.Get(context.Background())
	require.Error(t, err)
	fail = false
	u, _, err := s.Get(context.Background())
	require.NoError(t, err)
	assert.Equal(t, "cdn.test", u.Host)
}
