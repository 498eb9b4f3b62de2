package config

import (
	"fmt"
	"strings"
)

// The enumerated settings are named string types that check their value as
// it is read (from the file or an environment variable), so code that holds
// one holds a valid value and compares it against the constants below
// rather than against string literals. Values are case-insensitive and
// surrounding spaces are ignored.

// parseEnum returns text, trimmed and lower-cased, if it is one of allowed.
func parseEnum(text []byte, allowed ...string) (string, error) {
	v := strings.ToLower(strings.TrimSpace(string(text)))
	for _, a := range allowed {
		if v == a {
			return v, nil
		}
	}
	return "", fmt.Errorf("must be one of %s, got %q", strings.Join(allowed, ", "), string(text))
}

// RequireKey is clients.require_key.
type RequireKey string

const (
	RequireKeyNone  RequireKey = "false" // worker keys are optional
	RequireKeyGated RequireKey = "gated" // no key: served without the gateway's credentials
	RequireKeyAll   RequireKey = "all"   // every request needs a worker key
)

// UnmarshalText reads and checks the value.
func (e *RequireKey) UnmarshalText(text []byte) error {
	v, err := parseEnum(text, string(RequireKeyNone), string(RequireKeyGated), string(RequireKeyAll))
	if err != nil {
		return err // the value in force stays, so only this error is reported
	}
	*e = RequireKey(v)
	return nil
}

// OwnCredentials is clients.own_credentials.
type OwnCredentials string

const (
	OwnCredentialsReplace OwnCredentials = "replace" // the gateway's credential is sent instead
	OwnCredentialsPass    OwnCredentials = "pass"    // the worker's own is forwarded to its host
)

// UnmarshalText reads and checks the value.
func (e *OwnCredentials) UnmarshalText(text []byte) error {
	v, err := parseEnum(text, string(OwnCredentialsReplace), string(OwnCredentialsPass))
	if err != nil {
		return err // the value in force stays, so only this error is reported
	}
	*e = OwnCredentials(v)
	return nil
}

// TunnelPolicy is proxy.tunnel.
type TunnelPolicy string

const (
	TunnelAllow TunnelPolicy = "allow" // CONNECT elsewhere is a blind tunnel
	TunnelDeny  TunnelPolicy = "deny"  // CONNECT elsewhere is refused with 403
)

// UnmarshalText reads and checks the value.
func (e *TunnelPolicy) UnmarshalText(text []byte) error {
	v, err := parseEnum(text, string(TunnelAllow), string(TunnelDeny))
	if err != nil {
		return err // the value in force stays, so only this error is reported
	}
	*e = TunnelPolicy(v)
	return nil
}

// StorageBackend is storage.backend.
type StorageBackend string

const (
	BackendDisk StorageBackend = "disk" // data_dir only
	BackendS3   StorageBackend = "s3"   // data_dir in front of a shared bucket
)

// UnmarshalText reads and checks the value.
func (e *StorageBackend) UnmarshalText(text []byte) error {
	v, err := parseEnum(text, string(BackendDisk), string(BackendS3))
	if err != nil {
		return err // the value in force stays, so only this error is reported
	}
	*e = StorageBackend(v)
	return nil
}

// XetMode is huggingface.xet. Its values are those of hfhub's Xet policy.
type XetMode string

const (
	XetAuto  XetMode = "auto"
	XetServe XetMode = "serve"
	XetHide  XetMode = "hide"
)

// UnmarshalText reads and checks the value.
func (e *XetMode) UnmarshalText(text []byte) error {
	v, err := parseEnum(text, string(XetAuto), string(XetServe), string(XetHide))
	if err != nil {
		return err // the value in force stays, so only this error is reported
	}
	*e = XetMode(v)
	return nil
}

// LogLevel is log.level.
type LogLevel string

// The log levels, least severe first.
const (
	LogDebug LogLevel = "debug"
	LogInfo  LogLevel = "info"
	LogWarn  LogLevel = "warn"
	LogError LogLevel = "error"
)

// UnmarshalText reads and checks the value.
func (e *LogLevel) UnmarshalText(text []byte) error {
	v, err := parseEnum(text, string(LogDebug), string(LogInfo), string(LogWarn), string(LogError))
	if err != nil {
		return err // the value in force stays, so only this error is reported
	}
	*e = LogLevel(v)
	return nil
}

// LogFormat is log.format.
type LogFormat string

const (
	LogText LogFormat = "text"
	LogJSON LogFormat = "json"
)

// UnmarshalText reads and checks the value.
func (e *LogFormat) UnmarshalText(text []byte) error {
	v, err := parseEnum(text, string(LogText), string(LogJSON))
	if err != nil {
		return err // the value in force stays, so only this error is reported
	}
	*e = LogFormat(v)
	return nil
}
