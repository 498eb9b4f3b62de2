package s3tier

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/modelgate/modelgate/cache"
)

// What the admin API keeps in the bucket, so that every gateway answers
// for it:
//
//	pins/<sha256 of spec>   a pin set through the admin API (its body is
//	                        the spec, "hf:org/name@rev", "civitai:<id>")
//	jobs/<id>.json          a prefetch or verify job as last saved by the
//	                        gateway running it
//	purged/<algo>/<hex>     a blob an operator purged: every gateway drops
//	                        its hot copy (unless it pins it); removed when
//	                        the blob is uploaded again, or after a week

func (t *Tier) pinKey(spec string) string {
	sum := sha256.Sum256([]byte(spec))
	return t.prefix + "pins/" + hex.EncodeToString(sum[:])
}

// AddPin records a pin for every gateway.
func (t *Tier) AddPin(ctx context.Context, spec string) error {
	_, err := t.c.PutObject(ctx, t.bucket, t.pinKey(spec), strings.NewReader(spec), int64(len(spec)),
		minio.PutObjectOptions{ContentType: "text/plain", DisableMultipart: true})
	if err != nil {
		return fmt.Errorf("s3tier: recording pin: %w", err)
	}
	t.rememberPins(func(p []string) []string {
		if !slices.Contains(p, spec) {
			p = append(p, spec)
			slices.Sort(p)
		}
		return p
	})
	return nil
}

// RemovePin removes a pin recorded with AddPin; false when there was none.
func (t *Tier) RemovePin(ctx context.Context, spec string) (bool, error) {
	ok, err := t.exists(ctx, t.pinKey(spec))
	if err != nil || !ok {
		return false, err
	}
	if err := t.c.RemoveObject(ctx, t.bucket, t.pinKey(spec), minio.RemoveObjectOptions{}); err != nil {
		return false, fmt.Errorf("s3tier: removing pin: %w", err)
	}
	t.rememberPins(func(p []string) []string {
		return slices.DeleteFunc(p, func(s string) bool { return s == spec })
	})
	return true, nil
}

// Pins lists the pins recorded in the bucket (and remembers them for
// KnownPins).
func (t *Tier) Pins(ctx context.Context) ([]string, error) {
	var keys []string
	if err := t.list(ctx, "pins", func(o minio.ObjectInfo) { keys = append(keys, o.Key) }); err != nil {
		return nil, err
	}
	out := []string{}
	for _, k := range keys {
		b, err := t.getSmall(ctx, k)
		if isNotFound(err) {
			continue // removed since the listing
		}
		if err != nil {
			return nil, fmt.Errorf("s3tier: reading pin: %w", err)
		}
		out = append(out, string(b))
	}
	slices.Sort(out)
	t.rememberPins(func([]string) []string { return slices.Clone(out) })
	return out, nil
}

func (t *Tier) rememberPins(f func([]string) []string) {
	t.ev.mu.Lock()
	defer t.ev.mu.Unlock()
	t.ev.pins = f(t.ev.pins)
}

// KnownPins returns the bucket's pins as last read (by Pins, which every
// maintenance run calls, or by this gateway's own changes): the hot
// tier's eviction asks for them and must not wait on the bucket.
func (t *Tier) KnownPins() []string {
	t.ev.mu.Lock()
	defer t.ev.mu.Unlock()
	return slices.Clone(t.ev.pins)
}

// ErrNoJob is Job's answer for an id the bucket does not hold.
var ErrNoJob = errors.New("s3tier: no such job")

var jobID = regexp.MustCompile(`^[0-9a-f]{1,64}$`)

func (t *Tier) jobKey(id string) (string, error) {
	if !jobID.MatchString(id) {
		return "", ErrNoJob
	}
	return t.prefix + "jobs/" + id + ".json", nil
}

// PutJob saves a job's JSON document for every gateway to read.
func (t *Tier) PutJob(ctx context.Context, id string, doc []byte) error {
	key, err := t.jobKey(id)
	if err != nil {
		return err
	}
	_, err = t.c.PutObject(ctx, t.bucket, key, bytes.NewReader(doc), int64(len(doc)),
		minio.PutObjectOptions{ContentType: "application/json", DisableMultipart: true})
	if err != nil {
		return fmt.Errorf("s3tier: saving job: %w", err)
	}
	return nil
}

// Job reads a job saved by any gateway; ErrNoJob when there is none.
func (t *Tier) Job(ctx context.Context, id string) ([]byte, error) {
	key, err := t.jobKey(id)
	if err != nil {
		return nil, err
	}
	b, err := t.getSmall(ctx, key)
	if isNotFound(err) {
		return nil, ErrNoJob
	}
	if err != nil {
		return nil, fmt.Errorf("s3tier: reading job: %w", err)
	}
	return b, nil
}

// Jobs reads every job saved in the bucket.
func (t *Tier) Jobs(ctx context.Context) ([][]byte, error) {
	var keys []string
	if err := t.list(ctx, "jobs", func(o minio.ObjectInfo) { keys = append(keys, o.Key) }); err != nil {
		return nil, err
	}
	var out [][]byte
	for _, k := range keys {
		b, err := t.getSmall(ctx, k)
		if isNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("s3tier: reading job: %w", err)
		}
		out = append(out, b)
	}
	return out, nil
}

// DeleteJob removes a job's document (a finished job past its time).
func (t *Tier) DeleteJob(ctx context.Context, id string) error {
	key, err := t.jobKey(id)
	if err != nil {
		return err
	}
	return t.c.RemoveObject(ctx, t.bucket, key, minio.RemoveObjectOptions{})
}

// Purge removes blob d from the bucket for an operator's purge, unless a
// gateway pinned it or is reading it from the bucket. It reports whether
// the bucket held it and whether it is gone.
func (t *Tier) Purge(ctx context.Context, d cache.Digest) (held, removed bool, err error) {
	held, err = t.exists(ctx, t.blobKey(d))
	if err != nil || !held {
		return false, false, err
	}
	pinned, err := t.PinnedAnywhere(ctx)
	if err != nil {
		return true, false, err
	}
	if pinned[d] {
		return true, false, nil
	}
	removed, err = t.removeBlob(ctx, d)
	if err != nil || !removed {
		return true, removed, err
	}
	if err := t.putEmpty(ctx, t.objKey("purged", d)); err != nil {
		// The bucket's copy is gone; only the other hot copies stay.
		t.log.Warn("recording a purge for the other gateways failed; their hot copies stay", "blob", d.String(), "err", err)
	}
	return true, true, nil
}

// applyPurges drops this gateway's hot copies of the blobs purged on any
// gateway since it last looked (all the recorded ones, after a start).
func (t *Tier) applyPurges(ctx context.Context) error {
	if t.ev.onPurged == nil {
		return nil
	}
	type mark struct {
		key string
		at  time.Time
		d   cache.Digest
	}
	var marks []mark
	err := t.list(ctx, "purged", func(o minio.ObjectInfo) {
		if d, tail, ok := t.parseDigestKey(o.Key, "purged"); ok && tail == "" {
			marks = append(marks, mark{o.Key, o.LastModified, d})
		}
	})
	if err != nil {
		return err
	}
	for _, m := range marks {
		t.ev.mu.Lock()
		seen := t.ev.purgesSeen[m.key].Equal(m.at)
		t.ev.purgesSeen[m.key] = m.at
		t.ev.mu.Unlock()
		if !seen {
			t.ev.onPurged(m.d)
		}
	}
	return nil
}

// SetOnPurged sets what drops this gateway's hot copy of a blob purged on
// any gateway; call it before StartMaintenance.
func (t *Tier) SetOnPurged(f func(d cache.Digest)) { t.ev.onPurged = f }
