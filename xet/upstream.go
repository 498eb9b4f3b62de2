package xet

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// wire types of the reconstruction answers (xet-core cas_types; v2 per
// huggingface.js XetBlob).
type wireRange struct {
	Start int64 `json:"start"`
	End   int64 `json:"end"`
}

type wireTerm struct {
	Hash           string    `json:"hash"`
	UnpackedLength int64     `json:"unpacked_length"`
	Range          wireRange `json:"range"`
}

type wireV2Range struct {
	Chunks wireRange `json:"chunks"`
	Bytes  wireRange `json:"bytes"`
}

type wireV2Fetch struct {
	URL    string        `json:"url"`
	Ranges []wireV2Range `json:"ranges"`
}

type wireV1Fetch struct {
	Range    wireRange `json:"range"`
	URL      string    `json:"url"`
	URLRange wireRange `json:"url_range"`
}

type wireRecon struct {
	OffsetIntoFirstRange int64                    `json:"offset_into_first_range"`
	Terms                []wireTerm               `json:"terms"`
	Xorbs                map[string][]wireV2Fetch `json:"xorbs,omitempty"`
	FetchInfo            map[string][]wireV1Fetch `json:"fetch_info,omitempty"`
}

// recon is a file's full reconstruction as the upstream gave it: terms are
// immutable for a file hash; the URLs are not and get refreshed.
type recon struct {
	terms []wireTerm
	// fetches per xorb, in v2 form (v1 answers are converted).
	fetches map[string][]wireV2Fetch
}

// upstreamToken is the operator's Xet token for one repo and revision.
type upstreamToken struct {
	access string
	casURL string
	exp    time.Time
}

// upstream talks to the Hub's token route and the CAS with the operator's
// credentials; nothing it holds ever reaches a worker.
type upstream struct {
	hub    *url.URL
	client *http.Client
	token  func() string // the operator's Hub token ("" for none)

	mu     sync.Mutex
	tokens map[string]upstreamToken // "type/repo@rev"
}

// xetToken returns a live operator Xet token for repo at rev, fetching a
// new one 30 s before the old one expires, as the clients do.
func (u *upstream) xetToken(ctx context.Context, typ, repo, rev string) (upstreamToken, error) {
	key := typ + "/" + repo + "@" + rev
	u.mu.Lock()
	t, ok := u.tokens[key]
	u.mu.Unlock()
	if ok && time.Until(t.exp) > 30*time.Second {
		return t, nil
	}
	target := strings.TrimSuffix(u.hub.String(), "/") + "/api/" + typ + "s/" + repo + "/xet-read-token/" + url.PathEscape(rev)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return t, err
	}
	if tok := u.token(); tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return t, fmt.Errorf("upstream Xet token: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return t, &statusError{status: resp.StatusCode, what: "upstream Xet token"}
	}
	var body struct {
		AccessToken string `json:"accessToken"`
		Exp         int64  `json:"exp"`
		CasURL      string `json:"casUrl"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&body); err != nil {
		return t, fmt.Errorf("upstream Xet token: %w", err)
	}
	t = upstreamToken{access: body.AccessToken, casURL: body.CasURL, exp: time.Unix(body.Exp, 0)}
	u.mu.Lock()
	u.tokens[key] = t
	u.mu.Unlock()
	return t, nil
}

type statusError struct {
	status int
	what   string
}

func (e *statusError) Error() string { return fmt.Sprintf("%s: HTTP %d", e.what, e.status) }

// reconstruct fetches the full reconstruction of fileHash (v2, falling
// back to v1 on 404/501).
func (u *upstream) reconstruct(ctx context.Context, typ, repo, rev, fileHash string) (*recon, error) {
	t, err := u.xetToken(ctx, typ, repo, rev)
	if err != nil {
		return nil, err
	}
	for _, v := range []string{"v2", "v1"} {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(t.casURL, "/")+"/"+v+"/reconstructions/"+fileHash, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+t.access)
		resp, err := u.client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("upstream reconstruction: %w", err)
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("upstream reconstruction: %w", err)
		}
		if v == "v2" && (resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusNotImplemented) {
			continue
		}
		if resp.StatusCode == http.StatusUnauthorized {
			u.mu.Lock()
			delete(u.tokens, typ+"/"+repo+"@"+rev) // refreshed on the next call
			u.mu.Unlock()
		}
		if resp.StatusCode != http.StatusOK {
			return nil, &statusError{status: resp.StatusCode, what: "upstream reconstruction"}
		}
		var w wireRecon
		if err := json.Unmarshal(body, &w); err != nil {
			return nil, fmt.Errorf("upstream reconstruction: %w", err)
		}
		r := &recon{terms: w.Terms, fetches: w.Xorbs}
		if r.fetches == nil {
			r.fetches = map[string][]wireV2Fetch{}
			for x, fis := range w.FetchInfo {
				for _, fi := range fis {
					r.fetches[x] = append(r.fetches[x], wireV2Fetch{URL: fi.URL, Ranges: []wireV2Range{{Chunks: fi.Range, Bytes: fi.URLRange}}})
				}
			}
		}
		return r, nil
	}
	return nil, &statusError{status: http.StatusNotFound, what: "upstream reconstruction"}
}
