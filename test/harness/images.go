package harness

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ImageTag is the tag hack/images.sh gives the images the tests build.
const ImageTag = "e2e"

// Test image references (hack/images.sh builds them).
const (
	PauseImage   = "localhost/magic-ip-test/pause:" + ImageTag
	TestbinImage = "localhost/magic-ip-test/testbin:" + ImageTag
)

// Image is a container image as a docker-archive tarball, and the reference it is tagged with.
type Image struct {
	Tar, Ref string
}

// Images are the docker-archive tars hack/images.sh built from the Dockerfiles, with the
// product's and the tests' references picked out by role.
type Images struct {
	// Dir is the directory hack/images.sh printed (or MAGIC_IP_IMAGES).
	Dir string
	// List is every image of its index.tsv.
	List []Image
	// Tars maps each image reference to its tarball.
	Tars map[string]string
	// Agent, Webhook, Testbin and Pause are references ("" when not built); Tag is their tag.
	Agent, Webhook, Testbin, Pause, Tag string
}

// Files are the tarballs of every image: what a real node imports.
func (im *Images) Files() []string {
	out := make([]string, 0, len(im.List))
	for _, i := range im.List {
		out = append(out, i.Tar)
	}
	return out
}

// BuildImages is the images in MAGIC_IP_IMAGES when set, or else runs hack/images.sh (which
// caches by a hash of its inputs: a warm call takes a few milliseconds). what is "all" (agent,
// webhook, testbin, pause) or "test" (testbin and pause). The tag is ImageTag; the version
// stamps are the script's defaults, whatever the caller's environment says, so every test shares
// one build.
func BuildImages(what string) (*Images, error) {
	if dir := os.Getenv("MAGIC_IP_IMAGES"); dir != "" {
		return LoadImages(dir)
	}
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(root, "hack", "images.sh"), what)
	cmd.Dir = root
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "IMAGE_TAG", "IMAGE_REPO", "VERSION", "COMMIT", "BUILD_DATE":
		default:
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "IMAGE_TAG="+ImageTag)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("hack/images.sh %s: %w\n%s", what, err, stderr.String())
	}
	return LoadImages(strings.TrimSpace(string(out)))
}

// LoadImages reads dir/index.tsv: one "<file>.tar<TAB><ref>" line per image, files relative to dir.
func LoadImages(dir string) (*Images, error) {
	path := filepath.Join(dir, "index.tsv")
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("image index: %w", err)
	}
	defer f.Close()
	im := &Images{Dir: dir, Tars: map[string]string{}}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		file, ref, ok := strings.Cut(line, "\t")
		if !ok {
			return nil, fmt.Errorf("image index %s: line %q is not <file><TAB><ref>", path, line)
		}
		im.add(Image{Tar: filepath.Join(dir, file), Ref: ref})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("image index %s: %w", path, err)
	}
	return im, nil
}

// add records an image and its role, by the last path element of its reference.
func (im *Images) add(i Image) {
	im.List = append(im.List, i)
	im.Tars[i.Ref] = i.Tar
	name, tag, _ := strings.Cut(i.Ref[strings.LastIndex(i.Ref, "/")+1:], ":")
	im.Tag = tag
	switch name {
	case "magic-ip-agent":
		im.Agent = i.Ref
	case "magic-ip-webhook":
		im.Webhook = i.Ref
	case "testbin":
		im.Testbin = i.Ref
	case "pause":
		im.Pause = i.Ref
	}
}

// NodeAssetsDir is MAGIC_IP_NODE_ASSETS, or else the directory hack/node-assets.sh links the
// real-node binaries into (building them first if needed): kubelet, containerd,
// containerd-shim-runc-v2, ctr, runc and cni/.
func NodeAssetsDir(root string) (string, error) {
	return envOrScript(root, "MAGIC_IP_NODE_ASSETS", "node-assets.sh")
}
