package hfhub

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	testCommit  = "0123456789abcdef0123456789abcdef01234567"
	testCommit2 = "89abcdef0123456789abcdef0123456789abcdef"
)

// gwURL parses path (already escaped, as a client sends it) on a gateway
// origin with url.Parse, so that RawPath is kept exactly as on a server.
func gwURL(t *testing.T, escapedPath string) *url.URL {
	t.Helper()
	u, err := url.Parse("http://gw.example" + escapedPath)
	require.NoError(t, err)
	return u
}

func TestParseRoute_AcceptsHubRoutesAndDecodesTheirParts(t *testing.T) {
	model := func(id string) Repo { return Repo{Type: Model, ID: id} }
	dataset := func(id string) Repo { return Repo{Type: Dataset, ID: id} }
	space := func(id string) Repo { return Repo{Type: Space, ID: id} }

	tests := []struct {
		name   string
		method string
		path   string
		want   Route
	}{
		// /resolve/
		{"model with namespace", "GET", "/org/model/resolve/main/config.json",
			Route{Kind: Resolve, Repo: model("org/model"), Revision: "main", Path: "config.json"}},
		{"legacy model without namespace", "GET", "/gpt2/resolve/main/config.json",
			Route{Kind: Resolve, Repo: model("gpt2"), Revision: "main", Path: "config.json"}},
		{"HEAD is parsed like GET", "HEAD", "/org/model/resolve/main/model.safetensors",
			Route{Kind: Resolve, Repo: model("org/model"), Revision: "main", Path: "model.safetensors"}},
		{"dataset with namespace", "GET", "/datasets/org/data/resolve/main/train.csv",
			Route{Kind: Resolve, Repo: dataset("org/data"), Revision: "main", Path: "train.csv"}},
		{"legacy dataset without namespace", "GET", "/datasets/squad/resolve/main/train.json",
			Route{Kind: Resolve, Repo: dataset("squad"), Revision: "main", Path: "train.json"}},
		{"space", "GET", "/spaces/org/app/resolve/main/app.py",
			Route{Kind: Resolve, Repo: space("org/app"), Revision: "main", Path: "app.py"}},
		{"encoded PR revision stays one segment", "GET", "/org/model/resolve/refs%2Fpr%2F1/config.json",
			Route{Kind: Resolve, Repo: model("org/model"), Revision: "refs/pr/1", Path: "config.json"}},
		{"lower-case encoded slash in revision", "GET", "/org/model/resolve/refs%2fpr%2f12/config.json",
			Route{Kind: Resolve, Repo: model("org/model"), Revision: "refs/pr/12", Path: "config.json"}},
		{"encoded convert revision on a dataset", "GET", "/datasets/org/data/resolve/refs%2Fconvert%2Fparquet/default/train/0000.parquet",
			Route{Kind: Resolve, Repo: dataset("org/data"), Revision: "refs/convert/parquet", Path: "default/train/0000.parquet"}},
		{"commit revision", "GET", "/org/model/resolve/" + testCommit + "/config.json",
			Route{Kind: Resolve, Repo: model("org/model"), Revision: testCommit, Path: "config.json"}},
		{"tag revision with dots", "GET", "/org/model/resolve/v1.0.2/config.json",
			Route{Kind: Resolve, Repo: model("org/model"), Revision: "v1.0.2", Path: "config.json"}},
		{"encoded spaces in subfolders", "GET", "/org/model/resolve/main/sub%20dir/a%20b.bin",
			Route{Kind: Resolve, Repo: model("org/model"), Revision: "main", Path: "sub dir/a b.bin"}},
		{"deep subfolder", "GET", "/org/model/resolve/main/unet/diffusion/model.fp16.safetensors",
			Route{Kind: Resolve, Repo: model("org/model"), Revision: "main", Path: "unet/diffusion/model.fp16.safetensors"}},
		{"encoded percent sign in a file name", "GET", "/org/model/resolve/main/100%25.txt",
			Route{Kind: Resolve, Repo: model("org/model"), Revision: "main", Path: "100%.txt"}},
		{"non-ASCII file name", "GET", "/org/model/resolve/main/%C3%A9t%C3%A9.txt",
			Route{Kind: Resolve, Repo: model("org/model"), Revision: "main", Path: "été.txt"}},
		{"file named resolve", "GET", "/org/model/resolve/main/resolve",
			Route{Kind: Resolve, Repo: model("org/model"), Revision: "main", Path: "resolve"}},
		{"dots, dashes and underscores inside a repo id", "GET", "/my-org.x/model_v1.5-base/resolve/main/a.bin",
			Route{Kind: Resolve, Repo: model("my-org.x/model_v1.5-base"), Revision: "main", Path: "a.bin"}},
		{"dotfile in a subfolder", "GET", "/org/model/resolve/main/sub/.gitattributes",
			Route{Kind: Resolve, Repo: model("org/model"), Revision: "main", Path: "sub/.gitattributes"}},
		{"file name with inner dots", "GET", "/org/model/resolve/main/a..b.txt",
			Route{Kind: Resolve, Repo: model("org/model"), Revision: "main", Path: "a..b.txt"}},

		// /api/resolve-cache/
		{"resolve-cache for a model", "GET", "/api/resolve-cache/models/org/model/" + testCommit + "/config.json",
			Route{Kind: Resolve, Repo: model("org/model"), Revision: testCommit, Path: "config.json"}},
		{"resolve-cache for a legacy model", "HEAD", "/api/resolve-cache/models/gpt2/" + testCommit + "/config.json",
			Route{Kind: Resolve, Repo: model("gpt2"), Revision: testCommit, Path: "config.json"}},
		{"resolve-cache for a dataset in a subfolder", "GET", "/api/resolve-cache/datasets/org/data/" + testCommit + "/sub%20dir/README.md",
			Route{Kind: Resolve, Repo: dataset("org/data"), Revision: testCommit, Path: "sub dir/README.md"}},
		{"resolve-cache for a space", "GET", "/api/resolve-cache/spaces/org/app/" + testCommit + "/app.py",
			Route{Kind: Resolve, Repo: space("org/app"), Revision: testCommit, Path: "app.py"}},

		// /api/{type}s/{repo}
		{"model info", "GET", "/api/models/org/model",
			Route{Kind: RepoInfo, Repo: model("org/model")}},
		{"legacy model info", "GET", "/api/models/gpt2",
			Route{Kind: RepoInfo, Repo: model("gpt2")}},
		{"dataset info", "GET", "/api/datasets/org/data",
			Route{Kind: RepoInfo, Repo: dataset("org/data")}},
		{"space info", "GET", "/api/spaces/org/app",
			Route{Kind: RepoInfo, Repo: space("org/app")}},
		{"model info at a branch", "GET", "/api/models/org/model/revision/main",
			Route{Kind: RepoInfo, Repo: model("org/model"), Revision: "main"}},
		{"model info at an encoded PR", "GET", "/api/models/org/model/revision/refs%2Fpr%2F1",
			Route{Kind: RepoInfo, Repo: model("org/model"), Revision: "refs/pr/1"}},
		{"legacy model info at a commit", "GET", "/api/models/gpt2/revision/" + testCommit,
			Route{Kind: RepoInfo, Repo: model("gpt2"), Revision: testCommit}},
		{"dataset info at a branch", "GET", "/api/datasets/org/data/revision/main",
			Route{Kind: RepoInfo, Repo: dataset("org/data"), Revision: "main"}},

		// /tree/
		{"tree root", "GET", "/api/models/org/model/tree/main",
			Route{Kind: Tree, Repo: model("org/model"), Revision: "main"}},
		{"tree of a subfolder", "GET", "/api/models/org/model/tree/main/sub%20dir/inner",
			Route{Kind: Tree, Repo: model("org/model"), Revision: "main", Path: "sub dir/inner"}},
		{"tree of a legacy model", "GET", "/api/models/gpt2/tree/" + testCommit,
			Route{Kind: Tree, Repo: model("gpt2"), Revision: testCommit}},
		{"tree at an encoded revision", "GET", "/api/datasets/org/data/tree/refs%2Fconvert%2Fparquet/default",
			Route{Kind: Tree, Repo: dataset("org/data"), Revision: "refs/convert/parquet", Path: "default"}},
		{"tree of a space", "GET", "/api/spaces/org/app/tree/main",
			Route{Kind: Tree, Repo: space("org/app"), Revision: "main"}},

		// /paths-info/
		{"paths-info", "POST", "/api/models/org/model/paths-info/main",
			Route{Kind: PathsInfo, Repo: model("org/model"), Revision: "main"}},
		{"paths-info of a legacy dataset at a commit", "POST", "/api/datasets/squad/paths-info/" + testCommit,
			Route{Kind: PathsInfo, Repo: dataset("squad"), Revision: testCommit}},
		{"paths-info at an encoded PR", "POST", "/api/models/org/model/paths-info/refs%2Fpr%2F3",
			Route{Kind: PathsInfo, Repo: model("org/model"), Revision: "refs/pr/3"}},

		// The other repository reads clients make (issue 10 item 3).
		{"refs", "GET", "/api/models/org/model/refs",
			Route{Kind: RepoAPI, Repo: model("org/model")}},
		{"HEAD on a repo", "HEAD", "/api/models/org/model",
			Route{Kind: RepoInfo, Repo: model("org/model")}},
		{"HEAD on a tree", "HEAD", "/api/models/org/model/tree/main",
			Route{Kind: Tree, Repo: model("org/model"), Revision: "main"}},
		{"commits at an encoded PR", "GET", "/api/models/org/model/commits/refs%2Fpr%2F1",
			Route{Kind: RepoAPI, Repo: model("org/model"), Revision: "refs/pr/1"}},

		// Everything else under /api/ is refused by the mirror.
		{"whoami", "GET", "/api/whoami-v2", Route{Kind: OtherAPI}},
		{"model search", "GET", "/api/models", Route{Kind: OtherAPI}},
		{"tags endpoint", "GET", "/api/models-tags-by-type", Route{Kind: OtherAPI}},
		{"unknown repo type", "GET", "/api/kernels/org/k", Route{Kind: OtherAPI}},
		{"xet read token", "GET", "/api/models/org/model/xet-read-token/" + testCommit, Route{Kind: XetReadToken, Repo: Repo{Type: Model, ID: "org/model"}, Revision: testCommit}},
		{"dataset xet read token", "GET", "/api/datasets/org/data/xet-read-token/main", Route{Kind: XetReadToken, Repo: Repo{Type: Dataset, ID: "org/data"}, Revision: "main"}},
		{"xet read token is GET only", "POST", "/api/models/org/model/xet-read-token/main", Route{Kind: OtherAPI}},
		{"POST on a repo", "POST", "/api/models/org/model", Route{Kind: OtherAPI}},
		{"tree with POST", "POST", "/api/models/org/model/tree/main", Route{Kind: OtherAPI}},
		{"paths-info with GET", "GET", "/api/models/org/model/paths-info/main", Route{Kind: OtherAPI}},
		{"paths-info with a trailing path", "POST", "/api/models/org/model/paths-info/main/x", Route{Kind: OtherAPI}},
		{"revision with a trailing path", "GET", "/api/models/org/model/revision/main/x", Route{Kind: OtherAPI}},
		{"commit creation", "POST", "/api/models/org/model/commit/main", Route{Kind: OtherAPI}},
		{"xet write token", "GET", "/api/models/org/model/xet-write-token/main", Route{Kind: OtherAPI}},
		{"refs with a trailing path", "GET", "/api/models/org/model/refs/x/y", Route{Kind: OtherAPI}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseRoute(tc.method, gwURL(t, tc.path))
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestParseRoute_ReturnsErrNotHubRouteForUnrelatedPaths(t *testing.T) {
	tests := []struct {
		name   string
		method string
		path   string
	}{
		{"root", "GET", "/"},
		{"empty", "GET", ""},
		{"metrics", "GET", "/metrics"},
		{"repo page", "GET", "/org/model"},
		{"blob page", "GET", "/org/model/blob/main/config.json"},
		{"resolve without a file", "GET", "/org/model/resolve/main"},
		{"resolve without a revision", "GET", "/org/model/resolve"},
		{"bare api", "GET", "/api"},
		{"resolve-cache too short", "GET", "/api/resolve-cache/models/org"},
		{"resolve-cache of an unknown type", "GET", "/api/resolve-cache/kernels/org/k/" + testCommit + "/f"},
		{"other upstream", "GET", "/civitai/api/download/models/1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRoute(tc.method, gwURL(t, tc.path))
			require.ErrorIs(t, err, ErrNotHubRoute)
		})
	}
}

func TestParseRoute_RejectsInvalidPartsWithBadRequestError(t *testing.T) {
	long := func(n int) string { return strings.Repeat("a", n) }
	tests := []struct {
		name   string
		method string
		path   string
	}{
		// Dot segments, raw and encoded, anywhere in a file path.
		{"raw dot-dot segment", "GET", "/org/model/resolve/main/../secret"},
		{"raw dot-dot as the whole path", "GET", "/org/model/resolve/main/.."},
		{"raw dot-dot at the end", "GET", "/org/model/resolve/main/a/.."},
		{"raw dot segment", "GET", "/org/model/resolve/main/./a"},
		{"encoded dot-dot", "GET", "/org/model/resolve/main/%2e%2e/secret"},
		{"upper-case encoded dot-dot", "GET", "/org/model/resolve/main/%2E%2E/secret"},
		{"half-encoded dot-dot", "GET", "/org/model/resolve/main/.%2e/secret"},
		{"encoded dot", "GET", "/org/model/resolve/main/%2e/a"},
		{"dot-dot in a tree path", "GET", "/api/models/org/model/tree/main/%2e%2e"},
		{"dot-dot in a resolve-cache path", "GET", "/api/resolve-cache/models/org/model/" + testCommit + "/../x"},

		// Encoded slashes where a segment must stay a segment.
		{"encoded slash in a repo id", "GET", "/org%2Fmodel/resolve/main/config.json"},
		{"encoded slash in a repo name", "GET", "/org/a%2Fb/resolve/main/config.json"},
		{"encoded slash in a file segment", "GET", "/org/model/resolve/main/a%2Fb"},
		{"encoded slash climbing in a file segment", "GET", "/org/model/resolve/main/%2e%2e%2Fsecret"},
		{"encoded slash in an API repo id", "GET", "/api/models/org%2Fmodel"},

		// NUL, control characters and backslashes.
		{"encoded NUL", "GET", "/org/model/resolve/main/a%00b"},
		{"encoded newline", "GET", "/org/model/resolve/main/a%0Ab"},
		{"encoded carriage return", "GET", "/org/model/resolve/main/a%0Db"},
		{"encoded unit separator", "GET", "/org/model/resolve/main/a%1Fb"},
		{"encoded DEL", "GET", "/org/model/resolve/main/a%7Fb"},
		{"raw backslash", "GET", `/org/model/resolve/main/a\b`},
		{"encoded backslash", "GET", "/org/model/resolve/main/..%5C..%5Csecret"},
		{"NUL in a revision", "GET", "/org/model/resolve/ma%00in/a"},
		{"NUL in a tree path", "GET", "/api/models/org/model/tree/main/a%00"},

		// Empty segments.
		{"empty file segment", "GET", "/org/model/resolve/main/a//b"},
		{"trailing slash", "GET", "/org/model/resolve/main/dir/"},
		{"empty revision", "GET", "/org/model/resolve//config.json"},
		{"empty repo segment", "GET", "/org//resolve/main/config.json"},
		{"empty segment in a tree path", "GET", "/api/models/org/model/tree/main/a//b"},

		// Lengths.
		{"over-long escaped path", "GET", "/org/model/resolve/main/" + strings.Repeat("%41", maxPathLen*2)},
		{"over-long file path", "GET", "/org/model/resolve/main/" + long(maxPathLen/2) + "/" + long(maxPathLen/2)},
		{"over-long revision", "GET", "/org/model/resolve/" + long(maxRevisionLen+1) + "/a"},
		{"over-long repo segment", "GET", "/org/" + long(maxSegmentLen+1) + "/resolve/main/a"},

		// Revisions that are no valid Git ref name.
		{"revision with tilde", "GET", "/org/model/resolve/main~1/a"},
		{"revision with caret", "GET", "/org/model/resolve/main%5E/a"},
		{"revision with colon", "GET", "/org/model/resolve/a%3Ab/a"},
		{"revision with space", "GET", "/org/model/resolve/a%20b/a"},
		{"revision with reflog syntax", "GET", "/org/model/resolve/main@%7B1%7D/a"},
		{"revision with dot-dot", "GET", "/org/model/resolve/a..b/a"},
		{"revision dot-dot alone", "GET", "/org/model/resolve/../a"},
		{"revision ending in .lock", "GET", "/org/model/resolve/x.lock/a"},
		{"revision with a leading slash", "GET", "/org/model/resolve/%2Fmain/a"},
		{"revision with a trailing slash", "GET", "/org/model/resolve/main%2F/a"},
		{"revision with a double slash", "GET", "/org/model/resolve/refs%2F%2Fpr/a"},
		{"revision with a leading dot", "GET", "/org/model/resolve/.hidden/a"},
		{"revision component with a leading dot", "GET", "/org/model/resolve/refs%2F.x/a"},
		{"invalid revision in repo info", "GET", "/api/models/org/model/revision/main~1"},
		{"invalid revision in a tree", "GET", "/api/models/org/model/tree/a..b"},
		{"invalid revision in paths-info", "POST", "/api/models/org/model/paths-info/x.lock"},

		// Repo ids.
		{"double dash in a namespace", "GET", "/org--x/model/resolve/main/a"},
		{"double dot in a name", "GET", "/org/mo..del/resolve/main/a"},
		{"leading dot", "GET", "/.org/model/resolve/main/a"},
		{"trailing dot", "GET", "/org/model./resolve/main/a"},
		{"leading dash", "GET", "/-org/model/resolve/main/a"},
		{"trailing dash", "GET", "/org/model-/resolve/main/a"},
		{"leading underscore", "GET", "/org/_model/resolve/main/a"},
		{"encoded character in a repo id", "GET", "/org/mo%20del/resolve/main/a"},
		{"bad dataset id", "GET", "/datasets/org--x/data/resolve/main/a"},
		{"bad repo id in repo info", "GET", "/api/models/org/mo..del"},
		{"bad legacy repo id in repo info", "GET", "/api/models/.hidden"},
		{"bad repo id in a tree", "GET", "/api/datasets/org--x/data/tree/main"},
		{"bad repo id in resolve-cache", "GET", "/api/resolve-cache/models/org/.m/" + testCommit + "/a"},
		{"dot-dot in an API path", "GET", "/api/models/org/model/refs/../../../whoami-v2"},
		{"encoded dot-dot in an API path", "GET", "/api/models/org/model/commits/%2e%2e/x"},
		{"dot in an API path", "GET", "/api/./whoami-v2"},
		{"bad repo id in refs", "GET", "/api/models/org/mo..del/refs"},

		// resolve-cache only ever names a commit.
		{"resolve-cache with a branch", "GET", "/api/resolve-cache/models/org/model/main/config.json"},
		{"resolve-cache with an upper-case commit", "GET", "/api/resolve-cache/models/org/model/" + strings.ToUpper(testCommit) + "/config.json"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRoute(tc.method, gwURL(t, tc.path))
			var bad *BadRequestError
			require.ErrorAs(t, err, &bad)
			assert.NotEmpty(t, bad.Reason)
			assert.Equal(t, bad.Reason, err.Error())
			assert.False(t, errors.Is(err, ErrNotHubRoute), "a bad Hub route is not an unrelated path")
		})
	}
}

func TestParseRoute_RejectsRawControlCharactersInHandBuiltURLs(t *testing.T) {
	// url.Parse refuses raw control characters, but a URL built in code
	// (or decoded by another layer) can still carry them in Path.
	tests := []struct {
		name string
		path string
	}{
		{"NUL", "/org/model/resolve/main/a\x00b"},
		{"SOH", "/org/model/resolve/main/a\x01b"},
		{"newline", "/org/model/resolve/main/a\nb"},
		{"DEL", "/org/model/resolve/main/a\x7fb"},
		{"tab in a revision", "/org/model/resolve/ma\tin/a"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRoute(http.MethodGet, &url.URL{Scheme: "http", Host: "gw.example", Path: tc.path})
			var bad *BadRequestError
			require.ErrorAs(t, err, &bad)
		})
	}
}

func TestParseRoute_AcceptsLimitsExactly(t *testing.T) {
	t.Run("revision of maximum length", func(t *testing.T) {
		rev := strings.Repeat("r", maxRevisionLen)
		got, err := ParseRoute(http.MethodGet, gwURL(t, "/org/model/resolve/"+rev+"/a"))
		require.NoError(t, err)
		assert.Equal(t, rev, got.Revision)
	})
	t.Run("repo segment of maximum length", func(t *testing.T) {
		name := strings.Repeat("m", maxSegmentLen)
		got, err := ParseRoute(http.MethodGet, gwURL(t, "/org/"+name+"/resolve/main/a"))
		require.NoError(t, err)
		assert.Equal(t, "org/"+name, got.Repo.ID)
	})
	t.Run("file path of maximum length", func(t *testing.T) {
		p := strings.Repeat("p", maxPathLen-1) // plus one separator
		got, err := ParseRoute(http.MethodGet, gwURL(t, "/org/model/resolve/main/"+p))
		require.NoError(t, err)
		assert.Equal(t, p, got.Path)
	})
}

func TestResolvePath_RoundTripsThroughParseRoute(t *testing.T) {
	tests := []struct {
		name    string
		repo    Repo
		rev     string
		path    string
		escaped string
	}{
		{"plain model file", Repo{Model, "org/model"}, "main", "config.json",
			"/org/model/resolve/main/config.json"},
		{"legacy model", Repo{Model, "gpt2"}, "main", "config.json",
			"/gpt2/resolve/main/config.json"},
		{"dataset", Repo{Dataset, "org/data"}, "main", "train.csv",
			"/datasets/org/data/resolve/main/train.csv"},
		{"space", Repo{Space, "org/app"}, "main", "app.py",
			"/spaces/org/app/resolve/main/app.py"},
		{"PR revision is one escaped segment", Repo{Model, "org/model"}, "refs/pr/1", "config.json",
			"/org/model/resolve/refs%2Fpr%2F1/config.json"},
		{"commit revision", Repo{Model, "org/model"}, testCommit, "a.bin",
			"/org/model/resolve/" + testCommit + "/a.bin"},
		{"spaces in subfolders", Repo{Model, "org/model"}, "main", "sub dir/a b.bin",
			"/org/model/resolve/main/sub%20dir/a%20b.bin"},
		{"percent sign", Repo{Model, "org/model"}, "main", "100%.txt",
			"/org/model/resolve/main/100%25.txt"},
		{"query and fragment characters", Repo{Model, "org/model"}, "main", "a?b#c.txt",
			"/org/model/resolve/main/a%3Fb%23c.txt"},
		{"non-ASCII", Repo{Dataset, "org/data"}, "refs/convert/parquet", "été/x.parquet",
			"/datasets/org/data/resolve/refs%2Fconvert%2Fparquet/%C3%A9t%C3%A9/x.parquet"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := ResolvePath(tc.repo, tc.rev, tc.path)
			assert.Equal(t, tc.escaped, p)
			got, err := ParseRoute(http.MethodGet, gwURL(t, p))
			require.NoError(t, err)
			assert.Equal(t, Route{Kind: Resolve, Repo: tc.repo, Revision: tc.rev, Path: tc.path}, got)
		})
	}
}

func TestEscapePath_EscapesEachSegmentAndKeepsSeparators(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", ""},
		{"plain", "config.json", "config.json"},
		{"subfolders keep their slashes", "a/b/c.bin", "a/b/c.bin"},
		{"spaces", "sub dir/a b.bin", "sub%20dir/a%20b.bin"},
		{"percent", "100%", "100%25"},
		{"query and fragment", "a?b#c", "a%3Fb%23c"},
		{"non-ASCII", "été", "%C3%A9t%C3%A9"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, EscapePath(tc.in))
		})
	}
}

func TestIsCommit_AcceptsOnlyFullLowerCaseSHA1(t *testing.T) {
	tests := []struct {
		name string
		rev  string
		want bool
	}{
		{"full commit", testCommit, true},
		{"another commit", testCommit2, true},
		{"upper-case hex", strings.ToUpper(testCommit), false},
		{"short commit", testCommit[:39], false},
		{"too long", testCommit + "0", false},
		{"sha256", testCommit + testCommit[:24], false},
		{"non-hex", strings.Repeat("g", 40), false},
		{"branch", "main", false},
		{"empty", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, IsCommit(tc.rev))
		})
	}
}

func TestRepoAndKind_Labels(t *testing.T) {
	t.Run("URL prefixes and API types", func(t *testing.T) {
		tests := []struct {
			typ            RepoType
			prefix, plural string
		}{
			{Model, "", "models"},
			{Dataset, "datasets/", "datasets"},
			{Space, "spaces/", "spaces"},
		}
		for _, tc := range tests {
			r := Repo{Type: tc.typ, ID: "org/x"}
			assert.Equal(t, tc.prefix, r.URLPrefix(), tc.typ)
			assert.Equal(t, tc.plural, r.APIType(), tc.typ)
		}
	})
	t.Run("kind names are bounded", func(t *testing.T) {
		assert.Equal(t, "resolve", Resolve.Name())
		assert.Equal(t, "api_repo", RepoInfo.Name())
		assert.Equal(t, "api_tree", Tree.Name())
		assert.Equal(t, "api_paths_info", PathsInfo.Name())
		assert.Equal(t, "api_other", OtherAPI.Name())
		assert.Equal(t, "api_other", Kind(0).Name())
		assert.Equal(t, "api_other", Kind(99).Name())
	})
}

func TestCDNContentSHA256NamesOnlyLFSPaths(t *testing.T) {
	sha := strings.Repeat("ab", 32)
	tests := []struct {
		path string
		ok   bool
	}{
		{"/repos/ab/cd/" + strings.Repeat("0", 64) + "/" + sha, true},
		{"/repos/ab/cd/" + strings.Repeat("0", 64) + "/" + strings.ToUpper(sha), false},
		{"/xet-bridge-us/" + strings.Repeat("0", 24) + "/" + sha, false},
		{"/repos/ab/cd/" + sha, false},
		{"/repos/ab/cd/x/" + sha + "/extra", false},
	}
	for _, tt := range tests {
		got, ok := CDNContentSHA256(tt.path)
		assert.Equal(t, tt.ok, ok, tt.path)
		if ok {
			assert.Equal(t, sha, got)
		}
	}
}

// A worker that pastes a credential where a repo id or revision goes must
// not get it back in the error text (which proxies, logs and screenshots
// keep); the reason still says what was wrong.
func TestParseRoute_ErrorsNeverQuoteACredential(t *testing.T) {
	const token = "hf_AbCdEfGhIjKlMnOpQrStUv"
	for _, path := range []string{
		"/api/models/" + token + "!/x",
		"/org/model/resolve/" + token + "%00/config.json",
		"/" + token + "%21/m/resolve/main/f",
	} {
		u, err := url.Parse(path)
		require.NoError(t, err)
		_, err = ParseRoute(http.MethodGet, u)
		var bad *BadRequestError
		require.ErrorAs(t, err, &bad, path)
		assert.NotContains(t, bad.Error(), "AbCdEfGhIjKl", path)
		assert.Contains(t, bad.Error(), "invalid", path)
	}
}
