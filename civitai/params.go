package civitai

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"unicode"
)

// downloadParams are the query parameters CivitAI's download route
// accepts. Anything else — including a worker's own token — is dropped, so
// it neither reaches upstream nor splits the cache.
var downloadParams = []string{"type", "format", "size", "fp", "quantType", "fileId"}

// normalizeDownloadQuery keeps the accepted parameters (first value each)
// and validates them.
func normalizeDownloadQuery(q url.Values) (url.Values, error) {
	out := url.Values{}
	for _, k := range downloadParams {
		v := q.Get(k)
		if v == "" {
			continue
		}
		if len(v) > 64 || strings.ContainsFunc(v, unicode.IsControl) {
			return nil, fmt.Errorf("invalid %s parameter", k)
		}
		if k == "fileId" {
			if _, err := strconv.ParseUint(v, 10, 63); err != nil {
				return nil, fmt.Errorf("fileId must be a number")
			}
		}
		out.Set(k, v)
	}
	return out, nil
}
