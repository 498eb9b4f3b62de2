// Package indexkeys owns the layout of the gateway's index: every
// namespace's key constructors and parsers, principal scoping, last-known
// copies, which entries maintenance may drop, cross-scope queries, and the
// layout's version and migrations (layout.go).
//
// It is a leaf (standard library only) so that every package that reads
// or writes the index, from cache up to admin, can share one definition:
// a key written by one package and read by another cannot drift apart.
// Repo ids, revisions and paths are validated by their owners before they
// reach a key, so none of them holds a NUL and NUL separates fields.
package indexkeys

import "strings"

// Namespaces. Each is the first bytes of every key of its kind (after the
// scope, for scoped keys). Their byte layout is part of the on-disk
// format: changing one needs a migration in layout.go.
const (
	// Blob records (cache): Blob + digest ("sha256:<hex>").
	Blob = "blob/"

	// The Hub.
	HFFile    = "hf/file\x00"     // type, repo, commit, path -> file metadata
	HFRev     = "hf/rev\x00"      // type, repo, revision -> commit (with a TTL)
	HFLastRev = "hf/rev-last\x00" // type, repo, revision -> last commit seen
	HFAPI     = "hf/api\x00"      // type, repo, revision, request digest -> API answer
	HFSeen    = "hf/seen\x00"     // digest, repo as in URLs -> seen (CDN-path access)
	HFXet     = "hf/xet\x00"      // Xet hash, type, repo, commit -> size

	// Xet (package xet).
	XetRecon    = "xet/recon\x00"    // file hash -> reconstruction terms and ranges (no URLs)
	XetVerified = "xet/verified\x00" // file hash -> verified against its chunks
	XetOrigin   = "xet/origin\x00"   // xorb range digest hex -> file hash it was fetched for
	XetChunks   = "xet/chunks\x00"   // xorb hash -> hashes and sizes of its verified chunks

	// CivitAI.
	CivitAIDownload = "civitai/download\x00" // version id, query -> file
	CivitAIAPI      = "civitai/api\x00"      // escaped path "?" query -> answer

	// The Visionatrix catalogue.
	VixFresh     = "vix/catalog\x00"
	VixLastKnown = "vix/lastknown\x00"

	// Administration.
	AdminAudit = "admin/audit\x00"
	AdminJob   = "admin/job\x00"
	AdminPin   = "admin/pin\x00"

	// The index's own records.
	Meta = "meta/"
)

// ScopePrefix starts every index key scoped to a principal other than the
// gateway's own: ScopePrefix + scope + NUL + key.
const ScopePrefix = "scope\x00"

// LastKnownSuffix marks the copy of the last good answer for a key, kept
// longer than the answer itself so that it can stand in while the
// upstream is down.
const LastKnownSuffix = "\x00last"

// Scoped scopes key to a principal's scope: the gateway's own entries
// (scope "") keep their key.
func Scoped(scope, key string) string {
	if scope == "" {
		return key
	}
	return ScopePrefix + scope + "\x00" + key
}

// Unscoped returns the key a scoped index key was made from.
func Unscoped(key string) string {
	_, k := Split(key)
	return k
}

// Split returns a key's scope ("" for the gateway's own) and the key it
// was made from.
func Split(key string) (scope, unscoped string) {
	rest, ok := strings.CutPrefix(key, ScopePrefix)
	if !ok {
		return "", key
	}
	if s, k, ok := strings.Cut(rest, "\x00"); ok {
		return s, k
	}
	return "", key
}

// LastKnown is the key of the last-known copy of key's answer.
func LastKnown(key string) string { return key + LastKnownSuffix }

// BlobKey is the record of a blob, by its digest's string form.
func BlobKey(digest string) string { return Blob + digest }

// HFFileKey is the key of a file of repo (type, id) at commit.
func HFFileKey(repoType, repoID, commit, path string) string {
	return HFFilePrefix(repoType, repoID, commit) + path
}

// HFFilePrefix starts every HFFileKey of repo at commit, or at every
// commit when commit is "".
func HFFilePrefix(repoType, repoID, commit string) string {
	p := HFFile + repoType + "\x00" + repoID + "\x00"
	if commit != "" {
		p += commit + "\x00"
	}
	return p
}

// ParseHFFile splits an (unscoped) HFFileKey.
func ParseHFFile(key string) (repoType, repoID, commit, path string, ok bool) {
	rest, ok := strings.CutPrefix(key, HFFile)
	if !ok {
		return "", "", "", "", false
	}
	parts := strings.SplitN(rest, "\x00", 4)
	if len(parts) != 4 {
		return "", "", "", "", false
	}
	return parts[0], parts[1], parts[2], parts[3], true
}

// HFRevKey is the key of the commit a revision resolved to.
func HFRevKey(repoType, repoID, rev string) string {
	return HFRev + repoType + "\x00" + repoID + "\x00" + rev
}

// HFLastRevKey is the key of the last commit a revision was seen at.
func HFLastRevKey(repoType, repoID, rev string) string {
	return HFLastRev + repoType + "\x00" + repoID + "\x00" + rev
}

// HFAPIPrefix starts every HFAPIKey of repo; what follows it is the
// revision, a NUL, and the request digest.
func HFAPIPrefix(repoType, repoID string) string {
	return HFAPI + repoType + "\x00" + repoID + "\x00"
}

// HFAPIKey is the key of a cached API answer about repo at rev ("" for a
// repo's info without /revision/), given a digest of the request.
func HFAPIKey(repoType, repoID, rev, requestDigest string) string {
	return HFAPIPrefix(repoType, repoID) + rev + "\x00" + requestDigest
}

// HFSeenPrefix starts every HFSeenKey of a digest.
func HFSeenPrefix(digest string) string { return HFSeen + digest + "\x00" }

// HFSeenKey records that the gateway saw a repo (as written in URLs:
// "org/name", "datasets/org/name") hold content digest.
func HFSeenKey(digest, urlRepo string) string { return HFSeenPrefix(digest) + urlRepo }

// HFURLRepo is a repo as written in URLs: models bare, other types
// under their plural.
func HFURLRepo(repoType, repoID string) string {
	switch repoType {
	case "dataset", "space":
		return repoType + "s/" + repoID
	}
	return repoID
}

// HFXetKey records that repo held the Xet file xetHash at commit.
func HFXetKey(xetHash, repoType, repoID, commit string) string {
	return HFXet + xetHash + "\x00" + repoType + "\x00" + repoID + "\x00" + commit
}

// XetReconKey is the key of a Xet file's reconstruction (immutable for a
// file hash; the signed URLs are not kept).
func XetReconKey(fileHash string) string { return XetRecon + fileHash }

// XetVerifiedKey records that a Xet file's cached ranges were checked
// against its hash.
func XetVerifiedKey(fileHash string) string { return XetVerified + fileHash }

// XetOriginKey records which Xet file a stored xorb range (by its digest's
// hex) was fetched for, to count the bytes other files share.
func XetOriginKey(rangeHex string) string { return XetOrigin + rangeHex }

// XetChunksKey records the hashes and sizes of a xorb's chunks that a
// verified file vouched for, by chunk index.
func XetChunksKey(xorb string) string { return XetChunks + xorb }

// CivitAIDownloadPrefix starts every CivitAIDownloadKey of a version.
func CivitAIDownloadPrefix(versionID string) string { return CivitAIDownload + versionID + "\x00" }

// CivitAIDownloadKey is the key of the file a download (version id and
// its normalised, encoded query) maps to.
func CivitAIDownloadKey(versionID, encodedQuery string) string {
	return CivitAIDownloadPrefix(versionID) + encodedQuery
}

// CivitAIAPIKey is the key of a cached CivitAI metadata answer.
func CivitAIAPIKey(escapedPath, encodedQuery string) string {
	return CivitAIAPI + escapedPath + "?" + encodedQuery
}

// Class says what index maintenance may do with an entry.
type Class int

const (
	// Kept entries are never removed by maintenance.
	Kept Class = iota
	// Reclaimable entries are copies of upstream answers: when together
	// they outgrow their budget, the oldest are dropped and asked for
	// again when next needed.
	Reclaimable
	// Counted entries are kept however old they are (offline mode relies
	// on them), but only a bounded number of the most recently written.
	Counted
)

// Classify says which entries maintenance may drop: copies of upstream
// answers (API answers, branch lookups, CivitAI mappings, the catalogue,
// Xet reconstructions, and their last-known copies) are reclaimable; the last commit of each
// revision is counted; blob records, file metadata, seen records and
// administration records are kept.
func Classify(key []byte) Class {
	k := Unscoped(string(key))
	switch {
	case strings.HasPrefix(k, HFLastRev):
		return Counted
	case strings.HasPrefix(k, HFAPI), strings.HasPrefix(k, HFRev),
		strings.HasPrefix(k, CivitAIAPI), strings.HasPrefix(k, CivitAIDownload),
		strings.HasPrefix(k, VixFresh), strings.HasPrefix(k, VixLastKnown),
		strings.HasPrefix(k, XetRecon), strings.HasPrefix(k, XetOrigin), strings.HasPrefix(k, XetChunks),
		// Audit records too: a worker looping over downloads must not
		// grow the index, which counts against max_size, without bound.
		strings.HasPrefix(k, AdminAudit):
		return Reclaimable
	}
	return Kept
}

// Scanner reads the index by prefix; cache.Index implements it.
type Scanner interface {
	Scan(prefix string, fn func(key string, val []byte) error) error
}

// ScanEverywhere calls fn for every entry of namespace (a prefix), the
// gateway's own and every principal's, with its key unscoped and as
// stored. It reads the namespace once and the scoped entries once,
// whatever the caller then looks for: queries over many repos or pins
// match each entry against a set instead of scanning once per item.
func ScanEverywhere(idx Scanner, namespace string, fn func(unscoped, raw string, val []byte) error) error {
	if err := idx.Scan(namespace, func(k string, v []byte) error { return fn(k, k, v) }); err != nil {
		return err
	}
	return idx.Scan(ScopePrefix, func(k string, v []byte) error {
		if u := Unscoped(k); strings.HasPrefix(u, namespace) {
			return fn(u, k, v)
		}
		return nil
	})
}
