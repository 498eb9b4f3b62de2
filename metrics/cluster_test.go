package metrics

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The S3 transport wrapper names each request's operation from its method
// and sub-resource (never the key), times it, and counts as errors only
// the answers that mean trouble: not a 404 or a lost conditional write.
func TestInstrumentS3(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/missing"):
			w.WriteHeader(http.StatusNotFound)
		case r.Header.Get("If-None-Match") == "*":
			w.WriteHeader(http.StatusPreconditionFailed)
		case strings.HasSuffix(r.URL.Path, "/denied"):
			w.WriteHeader(http.StatusForbidden)
		case strings.HasSuffix(r.URL.Path, "/broken"):
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	defer srv.Close()
	reg := prometheus.NewRegistry()
	rt := InstrumentS3(reg, http.DefaultTransport)
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()

	tests := []struct {
		method, url string
		header      http.Header
		op          string
		isErr       bool
	}{
		{http.MethodHead, srv.URL + "/b/mg/blobs/sha256/missing", nil, "stat", false},
		{http.MethodGet, srv.URL + "/b/mg/blobs/sha256/abc", nil, "get", false},
		{http.MethodPut, srv.URL + "/b/mg/leases/sha256/abc", http.Header{"If-None-Match": {"*"}}, "put", false},
		{http.MethodPut, srv.URL + "/b/mg/blobs/sha256/abc?partNumber=2&uploadId=u", nil, "put_part", false},
		{http.MethodPost, srv.URL + "/b/mg/blobs/sha256/abc?uploads", nil, "create_multipart", false},
		{http.MethodPost, srv.URL + "/b/mg/blobs/sha256/abc?uploadId=u", nil, "complete_multipart", false},
		{http.MethodDelete, srv.URL + "/b/mg/blobs/sha256/abc?uploadId=u", nil, "abort_multipart", false},
		{http.MethodDelete, srv.URL + "/b/mg/leases/sha256/abc", nil, "delete", false},
		{http.MethodGet, srv.URL + "/b?list-type=2&prefix=mg/", nil, "list", false},
		{http.MethodGet, srv.URL + "/b/mg/blobs/sha256/denied", nil, "get", true},
		{http.MethodPut, srv.URL + "/b/mg/blobs/sha256/broken", nil, "put", true},
		{http.MethodHead, deadURL + "/b/x", nil, "stat", true},
	}
	want := map[string]float64{}
	count := map[string]int{}
	for _, tt := range tests {
		req, err := http.NewRequest(tt.method, tt.url, nil)
		require.NoError(t, err)
		for k, v := range tt.header {
			req.Header[k] = v
		}
		resp, err := rt.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		count[tt.op]++
		if tt.isErr {
			want[tt.op]++
		}
	}
	for _, op := range S3Ops {
		assert.Equal(t, want[op], errsOf(t, reg, op), "errors of %s", op)
	}
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "modelgate_s3_request_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			op := m.GetLabel()[0].GetValue()
			assert.EqualValues(t, count[op], m.GetHistogram().GetSampleCount(), "requests of %s", op)
		}
	}
}

func errsOf(t *testing.T, reg *prometheus.Registry, op string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "modelgate_s3_request_errors_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == op {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no errors series for %s", op)
	return 0
}
