package harness

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Image is a container image as a docker-archive tarball, and the reference it is tagged with.
type Image struct {
	Tar, Ref string
}

// Test image references (hack/images.sh builds them; see LoadImages).
const (
	PauseImage   = "localhost/magic-ip-test/pause:e2e"
	TestbinImage = "localhost/magic-ip-test/testbin:e2e"
)

// ImagesDir is MAGIC_IP_IMAGES, or else the directory hack/images.sh builds the test images into
// (building them first if needed).
func ImagesDir(root string) (string, error) {
	return envOrScript(root, "MAGIC_IP_IMAGES", "images.sh")
}

// LoadImages reads dir/index.tsv: one "<file>.tar<TAB><ref>" line per image, files relative to dir.
func LoadImages(dir string) ([]Image, error) {
	path := filepath.Join(dir, "index.tsv")
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("image index: %w", err)
	}
	defer f.Close()
	var images []Image
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
		images = append(images, Image{Tar: filepath.Join(dir, file), Ref: ref})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("image index %s: %w", path, err)
	}
	return images, nil
}

// NodeAssetsDir is MAGIC_IP_NODE_ASSETS, or else the directory hack/node-assets.sh links the
// real-node binaries into (building them first if needed): kubelet, containerd,
// containerd-shim-runc-v2, ctr, runc and cni/.
func NodeAssetsDir(root string) (string, error) {
	return envOrScript(root, "MAGIC_IP_NODE_ASSETS", "node-assets.sh")
}
