package redact

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestStringMasksCredentialsInText(t *testing.T) {
	tests := []struct{ in, want string }{
		{"GET /api/download/models/1?token=abc123&type=Model", "GET /api/download/models/1?token=***&type=Model"},
		{"https://r2.example/f?X-Amz-Credential=AK%2F1&X-Amz-Signature=deadbeef", "https://r2.example/f?X-Amz-Credential=***&X-Amz-Signature=***"},
		{"https://cdn.example/x?Expires=1&Policy=eyJ&Signature=abc&Key-Pair-Id=K", "https://cdn.example/x?Expires=1&Policy=***&Signature=***&Key-Pair-Id=***"},
		{"https://b2.example/file/x?Authorization=4_002_abc&b2ContentDisposition=a", "https://b2.example/file/x?Authorization=***&b2ContentDisposition=a"},
		{"Authorization: Bearer hf_abcdefghijklmnop", "Authorization: Bearer ***"},
		{"Proxy-Authorization: Basic d29ya2VyOm1nd18xMjM=", "Proxy-Authorization: Basic ***"},
		{"token hf_AAAAAAAAAAAAAAAA leaked", "token hf_*** leaked"},
		{"worker mgw_0123456789abcdef", "worker mgw_***"},
		{"admin mga_0123456789abcdef", "admin mga_***"},
		{"nothing secret here /org/model/resolve/main/x.bin", "nothing secret here /org/model/resolve/main/x.bin"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, String(tt.in))
	}
}

func TestHandlerRedactsAttributesMessagesAndErrors(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(NewHandler(slog.NewTextHandler(&buf, nil)))
	log = log.With("token", "s3cret-one")
	log.Info("fetch failed for ?token=s3cret-two",
		"Authorization", "Bearer s3cret-three",
		"err", errors.New(`Get "https://s.example/x?X-Amz-Signature=s3cret-four": EOF`),
		slog.Group("req", "url", "/a?token=s3cret-five", "Proxy-Authorization", "Basic s3cret-six"),
		"path", "/org/model/resolve/main/config.json")
	out := buf.String()
	for _, s := range []string{"s3cret-one", "s3cret-two", "s3cret-three", "s3cret-four", "s3cret-five", "s3cret-six"} {
		assert.NotContains(t, out, s)
	}
	assert.Contains(t, out, "/org/model/resolve/main/config.json")
	assert.Contains(t, out, "***")
}

func TestStringMasksTheXetTokensTheGatewayIssues(t *testing.T) {
	got := String("reconstruction refused for Bearer-less token mgx1.eyJyZXBvIjoib3JnL20ifQ.c2lnbmF0dXJl in a message")
	if strings.Contains(got, "eyJyZXBv") || strings.Contains(got, "c2lnbmF0dXJl") {
		t.Fatalf("an mgx1 token survived: %s", got)
	}
}
