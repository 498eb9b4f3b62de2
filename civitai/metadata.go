package civitai

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/modelgate/modelgate/authinject"
	"github.com/modelgate/modelgate/indexkeys"
	"github.com/modelgate/modelgate/metrics"
	"github.com/modelgate/modelgate/origin"
	"github.com/modelgate/modelgate/reqinfo"
)

// versionInfo is the part of /api/v1/model-versions/{id} the gateway reads.
type versionInfo struct {
	ID    int64         `json:"id"`
	Files []versionFile `json:"files"`
}

// versionFile is one file of a version. Its SHA256 is published upper-case.
type versionFile struct {
	ID     int64  `json:"id"`
	Name   string `json:"name"`
	Hashes struct {
		SHA256 string `json:"SHA256"`
	} `json:"hashes"`
}

// match finds the file a download served: by the fileId it asked for, else
// by the name the storage gave it, else the version's only file.
func (v versionInfo) match(fileID, name string) (versionFile, bool) {
	if id, err := strconv.ParseInt(fileID, 10, 64); err == nil {
		for _, f := range v.Files {
			if f.ID == id {
				return f, true
			}
		}
		return versionFile{}, false
	}
	if name != "" {
		for _, f := range v.Files {
			if f.Name == name {
				return f, true
			}
		}
	}
	if len(v.Files) == 1 && name == "" {
		return v.Files[0], true
	}
	return versionFile{}, false
}

// version returns a version's metadata (through the metadata cache).
func (h *Handler) version(ctx context.Context, versionID string) (versionInfo, error) {
	body, _, err := h.cachedAPI(ctx, "/api/v1/model-versions/"+versionID, nil)
	if err != nil {
		return versionInfo{}, err
	}
	var v versionInfo
	if err := json.Unmarshal(body, &v); err != nil {
		return versionInfo{}, origin.BadAnswer(errors.New("version metadata is not the expected JSON"))
	}
	return v, nil
}

const (
	maxMetadataBody = 8 << 20
)

// cachedAPI returns the JSON body of a /api/v1/ route: from the index while
// it is younger than MetadataTTL, otherwise from upstream with the key
// (once for concurrent requests, retried when CivitAI blips), or, while
// CivitAI is down, the last known answer. Only 200 answers that are JSON
// are kept.
func (h *Handler) cachedAPI(ctx context.Context, escapedPath string, query url.Values) ([]byte, origin.From, error) {
	fetch := func(ctx context.Context) (origin.Fetched, error) {
		req, err := h.newRequest(ctx, http.MethodGet, escapedPath, query)
		if err != nil {
			return origin.Fetched{}, err
		}
		req.Header.Set("Accept", "application/json")
		resp, err := h.Upstream.Do(req, authinject.FollowSameHost)
		if err != nil {
			return origin.Fetched{}, origin.Unreachable(err)
		}
		if resp.StatusCode >= 400 {
			return origin.Fetched{}, origin.Refused(resp)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return origin.Fetched{}, &loginRedirectError{path: resp.Header.Get("Location")}
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxMetadataBody+1))
		if err != nil {
			return origin.Fetched{}, origin.Unreachable(err)
		}
		if len(body) > maxMetadataBody || !json.Valid(body) {
			return origin.Fetched{}, origin.BadAnswer(errors.New("the metadata answer is not JSON (or too large)"))
		}
		return origin.Fetched{Value: body, Keep: true}, nil
	}
	ttl := h.MetadataTTL
	if ttl <= 0 {
		ttl = -1 // not kept, but for the last-known copy
	}
	return h.metadata.Get(ctx, indexkeys.CivitAIAPIKey(escapedPath, query.Encode()), ttl, fetch)
}

// serveMetadata answers a /api/v1/ route with the key, pointing every
// downloadUrl at the address the worker used, so that its next download
// comes through the gateway too.
func (h *Handler) serveMetadata(w http.ResponseWriter, r *http.Request) {
	info := reqinfo.From(r.Context())
	// The metadata routes the gateway serves take no parameters: any
	// query is dropped, so it neither reaches CivitAI nor splits the
	// cache into one entry per junk parameter.
	body, from, err := h.cachedAPI(r.Context(), r.URL.EscapedPath(), nil)
	if err != nil {
		info.Result = "error"
		h.writeError(w, err)
		return
	}
	switch from {
	case origin.FromIndex:
		info.Result = "hit"
	case origin.FromLastKnown:
		info.Result = "stale"
		w.Header().Set("Warning", `110 - "Response is Stale"`)
	default:
		info.Result = "miss"
	}
	body = rewriteDownloadURLs(body, h.Endpoint.Scheme+"://"+h.Endpoint.Host, gatewayBase(r))
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	n, _ := w.Write(body)
	if h.Metrics != nil {
		h.Metrics.ServedBytes.WithLabelValues(metrics.SourceUpstream).Add(float64(n))
	}
}

// rewriteDownloadURLs replaces the origin of every "downloadUrl" string in a
// JSON document that points at the upstream (CivitAI builds them from the
// Host it was asked on) with the gateway's.
func rewriteDownloadURLs(body []byte, upstreamOrigin, gatewayOrigin string) []byte {
	if upstreamOrigin == gatewayOrigin {
		return body
	}
	var doc any
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		return body
	}
	changed := false
	var walk func(v any)
	walk = func(v any) {
		switch t := v.(type) {
		case map[string]any:
			for k, child := range t {
				if s, ok := child.(string); ok && k == "downloadUrl" && strings.HasPrefix(s, upstreamOrigin+"/") {
					t[k] = gatewayOrigin + strings.TrimPrefix(s, upstreamOrigin)
					changed = true
					continue
				}
				walk(child)
			}
		case []any:
			for _, child := range t {
				walk(child)
			}
		}
	}
	walk(doc)
	if !changed {
		return body
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(doc); err != nil {
		return body
	}
	return bytes.TrimRight(out.Bytes(), "\n")
}
