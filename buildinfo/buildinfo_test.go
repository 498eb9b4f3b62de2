package buildinfo

import (
	"runtime/debug"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestFromBuildInfo(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   debug.BuildInfo
		want Info
	}{
		{
			name: "stamped clean build",
			in: debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.3"}, Settings: []debug.BuildSetting{
				{Key: "vcs.revision", Value: "0123abcd"}, {Key: "vcs.time", Value: "2026-11-28T10:00:00Z"}, {Key: "vcs.modified", Value: "false"},
			}},
			want: Info{Version: "v1.2.3", Commit: "0123abcd", Time: "2026-11-28T10:00:00Z", GoVersion: "go1.26.8"},
		},
		{
			name: "dirty tree",
			in: debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
				{Key: "vcs.revision", Value: "0123abcd"}, {Key: "vcs.modified", Value: "true"},
			}},
			want: Info{Version: "(devel)", Commit: "0123abcd+dirty", Time: "unknown", GoVersion: "go1.26.8"},
		},
		{
			name: "no vcs stamp",
			in:   debug.BuildInfo{},
			want: Info{Version: "unknown", Commit: "unknown", Time: "unknown", GoVersion: "unknown"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, FromBuildInfo(&tc.in))
		})
	}
}

func TestLinkerValuesWinOverTheStamp(t *testing.T) {
	stamped := Info{Version: "(devel)", Commit: "unknown", Time: "unknown", GoVersion: "go1.26.8"}
	assert.Equal(t, Info{Version: "v2.0.0", Commit: "abc", Time: "2026-11-28T00:00:00Z", GoVersion: "go1.26.8"},
		stamped.override("v2.0.0", "abc", "2026-11-28T00:00:00Z"))
	assert.Equal(t, stamped, stamped.override("", "", ""))
}
