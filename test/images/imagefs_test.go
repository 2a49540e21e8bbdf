package images

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
)

// imageConfig is the part of an image's config (OCI/Docker) the checks read.
type imageConfig struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Config       struct {
		User       string            `json:"User"`
		Entrypoint []string          `json:"Entrypoint"`
		Cmd        []string          `json:"Cmd"`
		Env        []string          `json:"Env"`
		WorkingDir string            `json:"WorkingDir"`
		Labels     map[string]string `json:"Labels"`
	} `json:"config"`
}

// fsEntry is one path of an image's merged filesystem.
type fsEntry struct {
	hdr  *tar.Header
	data []byte // regular files only
}

// image is a docker-archive tar read whole: its tags, its config, and the filesystem its layers
// make once applied in order (whiteouts honoured), as a container would see it.
type image struct {
	tags   []string
	config imageConfig
	files  map[string]*fsEntry // key: absolute, cleaned path
}

// readImage reads a docker-archive tar (the format of `docker save` and `buildah push
// docker-archive:`) holding one image.
func readImage(tarPath string) (*image, error) {
	members, err := tarMembers(tarPath)
	if err != nil {
		return nil, err
	}
	var manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(members["manifest.json"], &manifest); err != nil || len(manifest) != 1 {
		return nil, fmt.Errorf("%s: manifest.json: want one image (err %v)", tarPath, err)
	}
	img := &image{tags: manifest[0].RepoTags, files: map[string]*fsEntry{}}
	if err := json.Unmarshal(members[manifest[0].Config], &img.config); err != nil {
		return nil, fmt.Errorf("%s: config %s: %w", tarPath, manifest[0].Config, err)
	}
	for _, l := range manifest[0].Layers {
		data, ok := members[l]
		if !ok {
			return nil, fmt.Errorf("%s: layer %s is missing", tarPath, l)
		}
		if err := img.apply(tar.NewReader(bytes.NewReader(data))); err != nil {
			return nil, fmt.Errorf("%s: layer %s: %w", tarPath, l, err)
		}
	}
	return img, nil
}

// tarMembers returns the regular files of a tar by name, symlinks resolved to their targets'
// contents (docker-archive links each layer.tar to a file at the top level).
func tarMembers(p string) (map[string][]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string][]byte{}
	links := map[string]string{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", p, err)
		}
		name := path.Clean(h.Name)
		switch h.Typeflag {
		case tar.TypeReg:
			if out[name], err = io.ReadAll(tr); err != nil {
				return nil, fmt.Errorf("read %s in %s: %w", name, p, err)
			}
		case tar.TypeSymlink:
			links[name] = path.Join(path.Dir(name), h.Linkname)
		}
	}
	for name, target := range links {
		out[name] = out[target]
	}
	return out, nil
}

// apply adds one layer to the merged filesystem.
func (img *image) apply(tr *tar.Reader) error {
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		name := path.Join("/", h.Name)
		dir, base := path.Split(name)
		switch {
		case base == ".wh..wh..opq": // opaque directory: the lower layers' children are gone
			img.removeUnder(path.Clean(dir))
			continue
		case strings.HasPrefix(base, ".wh."):
			gone := path.Join(dir, strings.TrimPrefix(base, ".wh."))
			delete(img.files, gone)
			img.removeUnder(gone)
			continue
		}
		e := &fsEntry{hdr: h}
		switch h.Typeflag {
		case tar.TypeReg:
			if e.data, err = io.ReadAll(tr); err != nil {
				return fmt.Errorf("read %s: %w", name, err)
			}
		case tar.TypeLink: // a hard link: the same file under another name
			target, ok := img.files[path.Join("/", h.Linkname)]
			if !ok {
				return fmt.Errorf("hard link %s to missing %s", name, h.Linkname)
			}
			e = &fsEntry{hdr: &tar.Header{Name: h.Name, Typeflag: tar.TypeReg, Mode: target.hdr.Mode,
				Uid: target.hdr.Uid, Gid: target.hdr.Gid, Size: target.hdr.Size}, data: target.data}
		}
		img.files[name] = e
	}
}

func (img *image) removeUnder(dir string) {
	for p := range img.files {
		if strings.HasPrefix(p, dir+"/") {
			delete(img.files, p)
		}
	}
}

// resolve follows symbolic links in every component of p, as the kernel would in the container,
// and returns the entry p names.
func (img *image) resolve(p string) (string, *fsEntry, error) {
	cur := "/"
	rest := strings.Split(strings.Trim(path.Clean(p), "/"), "/")
	for hops := 0; len(rest) > 0; {
		part := rest[0]
		rest = rest[1:]
		if part == "" || part == "." {
			continue
		}
		next := path.Join(cur, part)
		e, ok := img.files[next]
		if !ok && len(rest) > 0 && img.impliedDir(next) {
			cur = next // a directory a layer holds files in without an entry of its own
			continue
		}
		if !ok {
			return "", nil, fmt.Errorf("%s: %s: %w", p, next, fs.ErrNotExist)
		}
		if e.hdr.Typeflag != tar.TypeSymlink {
			cur = next
			continue
		}
		if hops++; hops > 40 {
			return "", nil, fmt.Errorf("%s: too many levels of symbolic links", p)
		}
		target := e.hdr.Linkname
		if !path.IsAbs(target) {
			target = path.Join(cur, target)
		}
		cur = "/"
		rest = append(strings.Split(strings.Trim(path.Clean(target), "/"), "/"), rest...)
	}
	return cur, img.files[cur], nil
}

// impliedDir: some path lies below dir.
func (img *image) impliedDir(dir string) bool {
	for p := range img.files {
		if strings.HasPrefix(p, dir+"/") {
			return true
		}
	}
	return false
}

// file returns the regular file p names (links followed).
func (img *image) file(p string) (*fsEntry, error) {
	real, e, err := img.resolve(p)
	if err != nil {
		return nil, err
	}
	if e == nil || e.hdr.Typeflag != tar.TypeReg {
		return nil, fmt.Errorf("%s (%s) is not a regular file", p, real)
	}
	return e, nil
}

// lookPath finds a command on the image's PATH, as a shell in the container would.
func (img *image) lookPath(cmd string) (string, error) {
	for _, kv := range img.config.Config.Env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			for _, dir := range strings.Split(v, ":") {
				if e, err := img.file(path.Join(dir, cmd)); err == nil && e.hdr.Mode&0o111 != 0 {
					return path.Join(dir, cmd), nil
				}
			}
			return "", fmt.Errorf("%s is not on the image's PATH %s", cmd, v)
		}
	}
	return "", fmt.Errorf("the image sets no PATH (looking for %s)", cmd)
}
