package fakecivitai

import "strconv"

// JSON shapes of the API answers, in the real service's field names.

type errorJSON struct {
	Error   string `json:"error"`
	Message string `json:"message,omitempty"`
}

type earlyAccessJSON struct {
	Error    string `json:"error"`
	Deadline string `json:"deadline"`
	Message  string `json:"message"`
}

type versionJSON struct {
	ID                int           `json:"id"`
	ModelID           int           `json:"modelId,omitempty"` // absent inside /api/v1/models/{id}
	Name              string        `json:"name"`
	CreatedAt         string        `json:"createdAt"`
	UpdatedAt         string        `json:"updatedAt"`
	PublishedAt       string        `json:"publishedAt"`
	TrainedWords      []string      `json:"trainedWords"`
	BaseModel         string        `json:"baseModel"`
	BaseModelType     string        `json:"baseModelType"`
	EarlyAccessEndsAt *string       `json:"earlyAccessEndsAt"`
	Status            string        `json:"status"`
	Availability      string        `json:"availability"`
	Stats             statsJSON     `json:"stats"`
	Model             *modelRefJSON `json:"model,omitempty"` // absent inside /api/v1/models/{id}
	Files             []fileJSON    `json:"files"`
	Images            []any         `json:"images"`
	DownloadURL       string        `json:"downloadUrl,omitempty"` // absent when archived
}

type statsJSON struct {
	DownloadCount int `json:"downloadCount"`
	RatingCount   int `json:"ratingCount"`
	Rating        int `json:"rating"`
	ThumbsUpCount int `json:"thumbsUpCount"`
}

type modelRefJSON struct {
	Name string `json:"name"`
	Type string `json:"type"`
	NSFW bool   `json:"nsfw"`
	POI  bool   `json:"poi"`
	Mode string `json:"mode,omitempty"` // "Archived" for archived versions
}

type fileJSON struct {
	ID                int          `json:"id"`
	SizeKB            float64      `json:"sizeKB"`
	Name              string       `json:"name"`
	Type              string       `json:"type"`
	PickleScanResult  string       `json:"pickleScanResult"`
	PickleScanMessage *string      `json:"pickleScanMessage"`
	VirusScanResult   string       `json:"virusScanResult"`
	VirusScanMessage  *string      `json:"virusScanMessage"`
	ScannedAt         *string      `json:"scannedAt"`
	Metadata          metadataJSON `json:"metadata"`
	Hashes            hashesJSON   `json:"hashes"`
	Primary           bool         `json:"primary"`
	DownloadURL       string       `json:"downloadUrl"`
}

type metadataJSON struct {
	Format    string `json:"format"`
	Size      string `json:"size"`
	FP        string `json:"fp"`
	QuantType string `json:"quantType,omitempty"`
}

type hashesJSON struct {
	AutoV2 string `json:"AutoV2,omitempty"`
	SHA256 string `json:"SHA256,omitempty"`
	CRC32  string `json:"CRC32,omitempty"`
	BLAKE3 string `json:"BLAKE3,omitempty"`
}

type modelJSON struct {
	ID            int           `json:"id"`
	Name          string        `json:"name"`
	Type          string        `json:"type"`
	NSFW          bool          `json:"nsfw"`
	ModelVersions []versionJSON `json:"modelVersions"`
}

// versionBody renders a version for a caller that reached the API at base
// ("https://host"). withModel selects the stand-alone shape (modelId and
// model present) over the one nested in /api/v1/models/{id}.
func versionBody(vs *versionState, base string, withModel bool) versionJSON {
	created := jsTime(vs.created)
	v := versionJSON{
		ID:            vs.ID,
		Name:          vs.Name,
		CreatedAt:     created,
		UpdatedAt:     created,
		PublishedAt:   created,
		TrainedWords:  []string{},
		BaseModel:     vs.BaseModel,
		BaseModelType: "Standard",
		Status:        "Published",
		Availability:  "Public",
		Files:         []fileJSON{},
		Images:        []any{},
	}
	if vs.EarlyAccess {
		d := jsTime(vs.deadline)
		v.EarlyAccessEndsAt = &d
		v.Availability = "EarlyAccess"
	}
	if withModel {
		v.ModelID = vs.ModelID
		v.Model = &modelRefJSON{Name: vs.modelName, Type: "Checkpoint"}
		if vs.Archived {
			v.Model.Mode = "Archived"
		}
	}
	// Archived models list no files and no download URL.
	if vs.Archived {
		return v
	}
	dl := base + "/api/download/models/" + strconv.Itoa(vs.ID)
	v.DownloadURL = dl
	for _, f := range vs.files {
		fj := fileJSON{
			ID:               f.ID,
			SizeKB:           float64(f.size) / 1024,
			Name:             f.Name,
			Type:             f.Type,
			PickleScanResult: "Success",
			VirusScanResult:  "Success",
			Metadata:         metadataJSON{Format: f.Format, Size: f.Size, FP: f.FP, QuantType: f.QuantType},
			Hashes:           f.hashes(),
			Primary:          f == vs.primary,
			DownloadURL:      dl,
		}
		if f.NoHash {
			fj.PickleScanResult, fj.VirusScanResult = "Pending", "Pending"
		} else {
			msg, at := "No Pickle imports", jsTime(f.uploaded)
			fj.PickleScanMessage, fj.ScannedAt = &msg, &at
		}
		if !fj.Primary {
			fj.DownloadURL += fileQuery(f)
		}
		v.Files = append(v.Files, fj)
	}
	return v
}

// fileQuery is the query the real service appends to a non-primary file's
// downloadUrl: type, format, size, fp (and quantType when set).
func fileQuery(f *fileState) string {
	q := "?type=" + queryEscape(f.Type) + "&format=" + queryEscape(f.Format) +
		"&size=" + queryEscape(f.Size) + "&fp=" + queryEscape(f.FP)
	if f.QuantType != "" {
		q += "&quantType=" + queryEscape(f.QuantType)
	}
	return q
}
