// Package buildinfo says which build of modelgate is running: the module
// version, the VCS commit and time the Go toolchain stamped into the binary
// (runtime/debug.ReadBuildInfo), so an operator can tell from
// `modelgate version`, /healthz or the modelgate_build_info metric which
// code a gateway runs without a shell on its host.
package buildinfo

import (
	"runtime/debug"
)

// Info describes one build. Fields the toolchain did not record (a binary
// built outside a VCS checkout, or with -buildvcs=false) are "unknown".
type Info struct {
	// Version is the main module's version: a tag, a pseudo-version, or
	// "(devel)" for a local build without a tag.
	Version string `json:"version"`
	// Commit is the VCS revision, with a "+dirty" suffix when the tree
	// had uncommitted changes.
	Commit string `json:"commit"`
	// Time is the commit time (RFC 3339), the closest thing to a build
	// time a reproducible build records.
	Time string `json:"build_time"`
	// GoVersion is the toolchain that built the binary.
	GoVersion string `json:"go_version"`
}

const unknown = "unknown"

// Set with -ldflags "-X github.com/modelgate/modelgate/buildinfo.commit=..."
// where the toolchain cannot stamp the VCS state itself: a build from a
// tarball or a container build context without .git, a git worktree (whose
// .git is a file the go command does not recognise), or GOFLAGS carrying
// -buildvcs=false. A value set here wins over the stamp.
var (
	version string
	commit  string
	date    string
)

// Read returns the running binary's build information.
func Read() Info {
	info := Info{Version: unknown, Commit: unknown, Time: unknown, GoVersion: unknown}
	if bi, ok := debug.ReadBuildInfo(); ok {
		info = FromBuildInfo(bi)
	}
	return info.override(version, commit, date)
}

func (i Info) override(version, commit, date string) Info {
	if version != "" {
		i.Version = version
	}
	if commit != "" {
		i.Commit = commit
	}
	if date != "" {
		i.Time = date
	}
	return i
}

// FromBuildInfo extracts Info from what the toolchain recorded.
func FromBuildInfo(bi *debug.BuildInfo) Info {
	info := Info{Version: bi.Main.Version, Commit: unknown, Time: unknown, GoVersion: bi.GoVersion}
	if info.Version == "" {
		info.Version = unknown
	}
	if info.GoVersion == "" {
		info.GoVersion = unknown
	}
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Commit = s.Value
		case "vcs.time":
			info.Time = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty && info.Commit != unknown {
		info.Commit += "+dirty"
	}
	return info
}

// String is the one-line form `modelgate version` prints.
func (i Info) String() string {
	return "modelgate " + i.Version + " commit " + i.Commit + " built " + i.Time + " with " + i.GoVersion
}
