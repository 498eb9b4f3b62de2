package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/modelgate/modelgate/indexkeys"
	"github.com/modelgate/modelgate/reqinfo"
)

// auditPrefix keys the audit records: "admin/audit\x00<unix ns, 20
// digits>\x00<seq>", so a scan runs in time order.
const auditPrefix = indexkeys.AdminAudit

// AuditRecord is one file download: who (worker key name, or the client
// address without one), what, when.
type AuditRecord struct {
	Time   time.Time `json:"time"`
	Key    string    `json:"key,omitempty"`
	Client string    `json:"client"`
	Route  string    `json:"route"`
	Path   string    `json:"path"`
	Status int       `json:"status"`
	Bytes  int64     `json:"bytes"`
	Result string    `json:"result"`
}

var auditSeq atomic.Int64

// audit records a file download answered with the gateway's own
// credentials available (every download through the Hub and CivitAI
// routes: the gateway cannot tell a gated file from a public one without
// asking the upstream, so it keeps them all, for AuditTTL). The request's
// log line carries the same fields (worker, remote, path).
func (s *Server) audit(r *http.Request, info *reqinfo.Info, status int, bytes int64) {
	if info.Route != "resolve" && info.Route != "civitai_download" && info.Route != "cdn" {
		return
	}
	if status >= 400 || r.Method != http.MethodGet {
		return
	}
	rec := AuditRecord{Time: time.Now().UTC(), Key: info.Worker, Client: clientIP(r.RemoteAddr),
		Route: info.Route, Path: r.URL.Path, Status: status, Bytes: bytes, Result: info.Result}
	b, _ := json.Marshal(rec)
	key := fmt.Sprintf("%s%020d\x00%d", auditPrefix, rec.Time.UnixNano(), auditSeq.Add(1))
	if err := s.opts.Index.Set(key, b, s.opts.AuditTTL); err != nil {
		s.log.Warn("recording audit entry", "err", err)
	}
}

func clientIP(remote string) string {
	if i := strings.LastIndexByte(remote, ':'); i > 0 {
		return strings.Trim(remote[:i], "[]")
	}
	return remote
}

// serveAudit answers GET /admin/v1/audit?key=NAME&client=ADDR&since=RFC3339|DURATION&limit=N.
func (s *Server) serveAudit(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var since time.Time
	if v := q.Get("since"); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			since = time.Now().Add(-d)
		} else if t, err := time.Parse(time.RFC3339, v); err == nil {
			since = t
		} else {
			writeError(w, http.StatusBadRequest, "since must be RFC 3339 time or a duration such as 24h")
			return
		}
	}
	limit := 1000
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100000 {
			writeError(w, http.StatusBadRequest, "limit must be from 1 to 100000")
			return
		}
		limit = n
	}
	key, client := q.Get("key"), q.Get("client")
	out := []AuditRecord{}
	start := auditPrefix
	if !since.IsZero() {
		start = fmt.Sprintf("%s%020d", auditPrefix, since.UnixNano())
	}
	err := s.opts.Index.Scan(auditPrefix, func(k string, v []byte) error {
		if k < start {
			return nil
		}
		var rec AuditRecord
		if json.Unmarshal(v, &rec) != nil {
			return nil
		}
		if (key != "" && rec.Key != key) || (client != "" && rec.Client != client) {
			return nil
		}
		out = append(out, rec)
		if len(out) > limit {
			out = out[1:] // the newest limit records
		}
		return nil
	})
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"records": out})
}
