package fakecivitai

import (
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
	"time"
)

// File is one file of a model version.
type File struct {
	ID   int
	Name string // "model.safetensors"; must not contain "/"
	Data []byte
	// Type is the file type: "Model" (default), "Pruned Model", "VAE",
	// "Config", "Text Encoder", ...
	Type string
	// Format is metadata.format: "SafeTensor" (default), "PickleTensor",
	// "GGUF", "Diffusers", "Other", ...
	Format string
	// Size is metadata.size: "full" (default) or "pruned".
	Size string
	// FP is metadata.fp: "fp16" (default), "fp32", "bf16", ...
	FP string
	// QuantType is metadata.quantType ("Q8_0", "Q4_K_M", ...); omitted from
	// the metadata when empty.
	QuantType string
	// Primary marks the version's primary file. Without any, the first
	// "Model"/"Pruned Model" file is primary, else the first file.
	Primary bool
	// NoHash publishes no hashes at all ("hashes":{}), as right after an
	// upload, before the asynchronous scan ran. Such files cannot be found
	// by hash.
	NoHash bool
	// Storage selects which storage serves the file: "r2" (default) or "b2".
	Storage string
}

// Version is one model version.
type Version struct {
	ID      int
	ModelID int
	Name    string // default "v{ID}"
	Files   []File
	// RequireAuth makes downloads need a valid key: anonymous callers get
	// 401 {"error":"Unauthorized","message":"The creator of this asset
	// requires you to be logged in to download it"} (or a 307 to /login
	// with a browser-like User-Agent).
	RequireAuth bool
	// EarlyAccess makes downloads need one of Options.EarlyAccessKeys:
	// others get 403 {"error":"Early Access","deadline":...,"message":...}
	// (or a 307 to /model-versions/{id} with a browser-like User-Agent).
	EarlyAccess bool
	// Archived makes downloads answer 410 {"error":"Model archived, not
	// available for download"}; the metadata then lists no files and no
	// downloadUrl, like the real API for archived models.
	Archived bool

	// ModelName is the parent model's name (default "Model {ModelID}").
	ModelName string
	// BaseModel is the version's base model (default "SDXL 1.0").
	BaseModel string
}

// Known file types and formats: the download route answers 400 for other
// values of ?type= and ?format=, like the real service's query validation.
var (
	knownTypes = []string{"Model", "Text Encoder", "Vision Encoder", "Pruned Model", "Negative",
		"Training Data", "VAE", "Config", "Archive", "UNet", "Diffusion Model", "CLIPVision",
		"ControlNet", "Workflow", "Upscaler", "Enhancement LoRA", "Other"}
	knownFormats = []string{"SafeTensor", "PickleTensor", "GGUF", "Diffusers", "Core ML", "ONNX", "Other"}
	knownSizes   = []string{"full", "pruned"}
)

// earlyAccessWindow is how far in the future an early-access deadline lies.
const earlyAccessWindow = 72 * time.Hour

// SHA256Upper is the sha256 of b as CivitAI publishes it: upper-case hex.
func SHA256Upper(b []byte) string {
	sum := sha256.Sum256(b)
	return strings.ToUpper(hex.EncodeToString(sum[:]))
}

// AutoV2 is CivitAI's short hash: the first 10 hex digits of the SHA256,
// upper-case.
func AutoV2(b []byte) string { return SHA256Upper(b)[:10] }

// fileState is a File with defaults applied and every identifier the API
// and the storage need precomputed, so handlers never hash large files on
// the request path. It is immutable once built.
type fileState struct {
	File
	versionID int
	size      int64
	sha256    string // upper-case hex
	crc32     string // upper-case hex, 8 digits
	blake3    string // stand-in: upper-case hex of a keyed sha256, not real BLAKE3
	sha1      string // lower-case hex, for the B2-style x-bz-content-sha1 header
	etag      string // quoted storage ETag (content MD5 hex), unrelated to sha256
	uploaded  time.Time
}

// hashes returns the published hashes in the API's key names.
func (f *fileState) hashes() hashesJSON {
	if f.NoHash {
		return hashesJSON{}
	}
	return hashesJSON{AutoV2: f.sha256[:10], SHA256: f.sha256, CRC32: f.crc32, BLAKE3: f.blake3}
}

// matchesHash reports whether h (already upper-cased) is one of the
// published hashes.
func (f *fileState) matchesHash(h string) bool {
	if f.NoHash || h == "" {
		return false
	}
	return h == f.sha256 || h == f.sha256[:10] || h == f.crc32 || h == f.blake3
}

// versionState is an immutable snapshot of one version. AddVersion replaces
// the whole value, so handlers can use it without holding the lock.
type versionState struct {
	Version
	files     []*fileState
	primary   *fileState // nil when the version has no files
	created   time.Time
	deadline  time.Time // early-access deadline, when EarlyAccess
	modelName string
}

func newVersionState(v Version) (*versionState, error) {
	if v.ID <= 0 || v.ModelID <= 0 {
		return nil, fmt.Errorf("version %d of model %d: ids must be positive", v.ID, v.ModelID)
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	vs := &versionState{Version: v, created: now, modelName: v.ModelName}
	vs.Files = nil // the states below are the source of truth
	if vs.modelName == "" {
		vs.modelName = fmt.Sprintf("Model %d", v.ModelID)
	}
	if vs.BaseModel == "" {
		vs.BaseModel = "SDXL 1.0"
	}
	if vs.Name == "" {
		vs.Name = fmt.Sprintf("v%d", v.ID)
	}
	if v.EarlyAccess {
		vs.deadline = now.Add(earlyAccessWindow)
	}
	seen := map[int]bool{}
	for _, f := range v.Files {
		if f.ID <= 0 || seen[f.ID] {
			return nil, fmt.Errorf("version %d: file id %d is not positive or not unique", v.ID, f.ID)
		}
		seen[f.ID] = true
		if f.Name == "" || strings.ContainsAny(f.Name, "/\x00") {
			return nil, fmt.Errorf("version %d: invalid file name %q", v.ID, f.Name)
		}
		fs, err := newFileState(f, v.ID, now)
		if err != nil {
			return nil, fmt.Errorf("version %d: %w", v.ID, err)
		}
		vs.files = append(vs.files, fs)
	}
	vs.primary = pickPrimary(vs.files)
	return vs, nil
}

func newFileState(f File, versionID int, uploaded time.Time) (*fileState, error) {
	if f.Type == "" {
		f.Type = "Model"
	}
	if f.Format == "" {
		f.Format = "SafeTensor"
	}
	if f.Size == "" {
		f.Size = "full"
	}
	if f.FP == "" {
		f.FP = "fp16"
	}
	switch f.Storage {
	case "":
		f.Storage = ServerR2
	case ServerR2, ServerB2:
	default:
		return nil, errors.New("file " + f.Name + ": Storage must be \"r2\" or \"b2\"")
	}
	sum := sha256.Sum256(f.Data)
	b3 := sha256.New()
	b3.Write([]byte("fakecivitai-blake3\x00"))
	b3.Write(f.Data)
	s1 := sha1.Sum(f.Data)
	m5 := md5.Sum(f.Data)
	return &fileState{
		File:      f,
		versionID: versionID,
		size:      int64(len(f.Data)),
		sha256:    strings.ToUpper(hex.EncodeToString(sum[:])),
		crc32:     fmt.Sprintf("%08X", crc32.ChecksumIEEE(f.Data)),
		blake3:    strings.ToUpper(hex.EncodeToString(b3.Sum(nil))),
		sha1:      hex.EncodeToString(s1[:]),
		etag:      `"` + hex.EncodeToString(m5[:]) + `"`,
		uploaded:  uploaded.Truncate(time.Second),
	}, nil
}

// isModelType reports whether t is one of the types the real service
// prefers when picking a default file.
func isModelType(t string) bool { return t == "Model" || t == "Pruned Model" }

// pickPrimary is the file marked Primary, else the first model file, else
// the first file.
func pickPrimary(files []*fileState) *fileState {
	for _, f := range files {
		if f.Primary {
			return f
		}
	}
	for _, f := range files {
		if isModelType(f.Type) {
			return f
		}
	}
	if len(files) > 0 {
		return files[0]
	}
	return nil
}

// selection is the file-selecting part of a download query.
type selection struct {
	fileID                       int // 0 = not given
	typ, format, size, fp, quant string
}

// selectFile applies the download route's file selection: fileId picks that
// exact file; otherwise the pool is the files of ?type= (default: the model
// files, or every file when the version has none), narrowed to those whose
// metadata matches every given format/size/fp/quantType, and the primary
// file wins among them, else the first. nil means 404 "File not found".
func (vs *versionState) selectFile(sel selection) *fileState {
	if sel.fileID != 0 {
		for _, f := range vs.files {
			if f.ID == sel.fileID {
				return f
			}
		}
		return nil
	}
	anyModel := false
	for _, f := range vs.files {
		anyModel = anyModel || isModelType(f.Type)
	}
	var cands []*fileState
	for _, f := range vs.files {
		switch {
		case sel.typ != "" && f.Type != sel.typ,
			sel.typ == "" && anyModel && !isModelType(f.Type),
			sel.format != "" && f.Format != sel.format,
			sel.size != "" && f.Size != sel.size,
			sel.fp != "" && f.FP != sel.fp,
			// Like the real service, a parameter the file has no metadata
			// for does not exclude it.
			sel.quant != "" && f.QuantType != "" && f.QuantType != sel.quant:
			continue
		}
		if f == vs.primary {
			return f
		}
		cands = append(cands, f)
	}
	if len(cands) > 0 {
		return cands[0]
	}
	return nil
}

// jsTime formats t like JavaScript's Date.toJSON.
func jsTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }
