// Package admincli is the command line over the admin API: `modelgate
// prefetch|ls|pin|unpin|purge|status|jobs|verify|export|import`. It needs
// no configuration file: the gateway's address comes from --gateway (or
// $MODELGATE_GATEWAY) and the admin key from $MODELGATE_ADMIN_KEY.
package admincli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// DefaultGateway is used without --gateway and $MODELGATE_GATEWAY.
const DefaultGateway = "http://127.0.0.1:8080"

// client talks to one gateway's admin API.
type client struct {
	base string
	key  string
	http *http.Client
}

// apiError is an error answer of the admin API.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return fmt.Sprintf("the gateway answered %d: %s", e.status, e.msg) }

func (c *client) request(ctx context.Context, method, path string, body io.Reader, ctype string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		// The URL holds no secret (the key travels in a header).
		return nil, fmt.Errorf("reaching the gateway at %s: %w", c.base, errors.Unwrap(err))
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return nil, &apiError{status: resp.StatusCode, msg: msg}
	}
	return resp, nil
}

// call sends a JSON body (nil: none) and decodes a JSON answer into out.
func (c *client) call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	ctype := ""
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body, ctype = bytes.NewReader(b), "application/json"
	}
	resp, err := c.request(ctx, method, path, body, ctype)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
