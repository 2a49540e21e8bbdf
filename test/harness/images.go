package harness

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ImageTag is the tag hack/images.sh gives the images the tests build.
const ImageTag = "e2e"

// Images are docker-archive tars built by hack/images.sh from the Dockerfiles.
type Images struct {
	Dir  string            // the cache directory hack/images.sh printed
	Tars map[string]string // image ref -> absolute path of its tar
}

// BuildImages runs hack/images.sh (which caches by a hash of its inputs: a warm call takes a few
// milliseconds) and reads the index of what it built. what is "all" (agent, webhook, testbin,
// pause) or "test" (testbin and pause). The tag is ImageTag; the version stamps are the script's
// defaults, whatever the caller's environment says, so every test shares one build.
func BuildImages(what string) (*Images, error) {
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
	imgs := &Images{Dir: strings.TrimSpace(string(out)), Tars: map[string]string{}}
	index, err := os.ReadFile(filepath.Join(imgs.Dir, "index.tsv"))
	if err != nil {
		return nil, fmt.Errorf("hack/images.sh %s: %w", what, err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(index)), "\n") {
		file, ref, ok := strings.Cut(l, "\t")
		if !ok {
			return nil, fmt.Errorf("%s/index.tsv: malformed line %q", imgs.Dir, l)
		}
		imgs.Tars[ref] = filepath.Join(imgs.Dir, file)
	}
	return imgs, nil
}
