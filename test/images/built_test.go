package images

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path"
	"slices"
	"strings"
	"testing"

	"github.com/magic-ip/magic-ip/test/harness"
)

// Image refs hack/images.sh builds for the tests.
const (
	agentRef   = "ghcr.io/magic-ip/magic-ip-agent:" + harness.ImageTag
	webhookRef = "ghcr.io/magic-ip/magic-ip-webhook:" + harness.ImageTag
	testbinRef = "localhost/magic-ip-test/testbin:" + harness.ImageTag
	pauseRef   = "localhost/magic-ip-test/pause:" + harness.ImageTag
)

// buildImages builds all images with hack/images.sh (cached) and reads each one's tar.
func buildImages(t *testing.T) map[string]*image {
	t.Helper()
	harness.RequireRoot(t)
	if _, err := exec.LookPath("buildah"); err != nil {
		msg := "building the images needs buildah (apt-get install buildah debootstrap, or `make prereqs`)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg + " — CI must provide it")
		}
		t.Skip("SKIPPED: " + msg)
	}
	built, err := harness.BuildImages("all")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("images in %s", built.Dir)
	imgs := map[string]*image{}
	for _, ref := range []string{agentRef, webhookRef, testbinRef, pauseRef} {
		tarPath, ok := built.Tars[ref]
		if !ok {
			t.Fatalf("%s/index.tsv lists no %s: %v", built.Dir, ref, built.Tars)
		}
		img, err := readImage(tarPath)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(img.tags, []string{ref}) {
			t.Errorf("%s is tagged %q, want %s (what `ctr images import` names it)", tarPath, img.tags, ref)
		}
		imgs[ref] = img
	}
	return imgs
}

// imageCheck is one rule about a built image; it returns what is wrong, or nil.
type imageCheck struct {
	name string
	fn   func(*image) error
}

func wantUser(uid, gid string) func(*image) error {
	return func(img *image) error {
		u, g, _ := strings.Cut(img.config.Config.User, ":")
		if u == "" {
			u = "0" // no USER: root
		}
		if u != uid || (gid != "" && g != gid) {
			return fmt.Errorf("USER %q, want %s:%s", img.config.Config.User, uid, gid)
		}
		return nil
	}
}

func wantEntrypoint(argv ...string) func(*image) error {
	return func(img *image) error {
		if !slices.Equal(img.config.Config.Entrypoint, argv) || len(img.config.Config.Cmd) != 0 {
			return fmt.Errorf("ENTRYPOINT %q CMD %q, want %q and no CMD", img.config.Config.Entrypoint, img.config.Config.Cmd, argv)
		}
		return nil
	}
}

func wantStatic(p string) func(*image) error {
	return func(img *image) error { return img.checkStatic(p) }
}

// wantCommands: each command is on the image's PATH and runs there (its loader and libraries
// are in the image; a static one needs none).
func wantCommands(cmds ...string) func(*image) error {
	return func(img *image) error {
		var problems []string
		for _, c := range cmds {
			p, err := img.lookPath(c)
			if err == nil {
				err = img.checkDynamic(p)
				if err != nil && img.checkStatic(p) == nil {
					err = nil
				}
			}
			if err != nil {
				problems = append(problems, err.Error())
			}
		}
		if len(problems) > 0 {
			return fmt.Errorf("%s", strings.Join(problems, "; "))
		}
		return nil
	}
}

func wantNoShell(img *image) error {
	for _, sh := range []string{"sh", "bash"} {
		if p, err := img.lookPath(sh); err == nil {
			return fmt.Errorf("the image has a shell: %s", p)
		}
	}
	return nil
}

// wantFile: p is a regular file with this mode whose content contains want.
func wantFile(p string, mode int64, want string) func(*image) error {
	return func(img *image) error {
		e, err := img.file(p)
		if err != nil {
			return err
		}
		if e.hdr.Mode&0o7777 != mode {
			return fmt.Errorf("%s has mode %#o, want %#o", p, e.hdr.Mode&0o7777, mode)
		}
		if !bytes.Contains(e.data, []byte(want)) {
			return fmt.Errorf("%s does not contain %q", p, want)
		}
		return nil
	}
}

// wantXtablesExtensions: the iptables extensions the agent's rules use are in the image.
func wantXtablesExtensions(img *image) error {
	var dir string
	for p := range img.files {
		if path.Base(p) == "libxt_standard.so" {
			dir = path.Dir(p)
		}
	}
	if dir == "" {
		return fmt.Errorf("no xtables extension directory (libxt_standard.so)")
	}
	var missing []string
	for _, ext := range []string{"libxt_comment.so", "libxt_conntrack.so", "libxt_tcp.so", "libxt_udp.so", "libxt_mark.so",
		"libxt_statistic.so", "libxt_MASQUERADE.so", "libxt_DNAT.so", "libipt_REJECT.so", "libip6t_REJECT.so"} {
		if _, err := img.openELF(path.Join(dir, ext)); err != nil {
			missing = append(missing, err.Error())
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s", strings.Join(missing, "; "))
	}
	return nil
}

func iptablesCommands() []string {
	var cmds []string
	for _, fam := range []string{"iptables", "ip6tables"} {
		for _, mode := range []string{"nft", "legacy"} {
			for _, suffix := range []string{"", "-save", "-restore"} {
				cmds = append(cmds, fam+"-"+mode+suffix)
			}
		}
	}
	return cmds
}

// imageChecks are the rules per image.
func imageChecks(wrapper string) map[string][]imageCheck {
	static := []imageCheck{{"USER 65532:65532", wantUser("65532", "65532")}, {"no shell", wantNoShell},
		{"CA certificates", wantFile("/etc/ssl/certs/ca-certificates.crt", 0o644, "BEGIN CERTIFICATE")},
		{"nonroot in /etc/passwd", wantFile("/etc/passwd", 0o644, "nonroot:x:65532:65532:")}}
	return map[string][]imageCheck{
		agentRef: {
			{"runs as root", wantUser("0", "")},
			{"entrypoint is the wrapper", wantEntrypoint(wrapperPath)},
			{"wrapper from hack/iptables-wrapper.sh, 0755", wantFile(wrapperPath, 0o755, wrapper)},
			{"static agent at /magic-ip-agent", wantStatic("/magic-ip-agent")},
			{"iptables nft and legacy run", wantCommands(iptablesCommands()...)},
			{"the wrapper's shell and tools run", wantCommands("sh", "mkdir", "ln", "grep")},
			{"xtables extensions the rules use", wantXtablesExtensions},
		},
		webhookRef: append(slices.Clone(static),
			imageCheck{"entrypoint is the webhook", wantEntrypoint("/magic-ip-webhook")},
			imageCheck{"static webhook at /magic-ip-webhook", wantStatic("/magic-ip-webhook")}),
		testbinRef: append(slices.Clone(static),
			imageCheck{"entrypoint is testbin", wantEntrypoint("/testbin")},
			imageCheck{"static /testbin", wantStatic("/testbin")}),
		pauseRef: append(slices.Clone(static),
			imageCheck{"entrypoint is pause", wantEntrypoint("/pause", "pause")},
			imageCheck{"static /pause", wantStatic("/pause")}),
	}
}

// TestBuiltImages builds the four images from their Dockerfiles (hack/images.sh, cached) and
// checks what each holds by reading its docker-archive tar: config and merged layers, no
// container engine involved.
func TestBuiltImages(t *testing.T) {
	imgs := buildImages(t)
	_, wrapper := readDockerfile(t, "hack/iptables-wrapper.sh")
	for ref, checks := range imageChecks(wrapper) {
		for _, c := range checks {
			t.Run(ref+"/"+c.name, func(t *testing.T) {
				if err := c.fn(imgs[ref]); err != nil {
					t.Errorf("%s: %v", ref, err)
				}
			})
		}
	}
}

// clone copies an image deeply enough for a breakage to change only the copy.
func (img *image) clone() *image {
	c := *img
	c.files = make(map[string]*fsEntry, len(img.files))
	for p, e := range img.files {
		h := *e.hdr
		c.files[p] = &fsEntry{hdr: &h, data: e.data}
	}
	c.config.Config.Env = slices.Clone(img.config.Config.Env)
	c.config.Config.Entrypoint = slices.Clone(img.config.Config.Entrypoint)
	return &c
}

// findFile returns the path of the first regular file named base.
func (img *image) findFile(base string) string {
	for p, e := range img.files {
		if path.Base(p) == base && e.data != nil {
			return p
		}
	}
	return "/missing/" + base
}

// TestImageChecksCanFail breaks each built image in one way per check (a copy, in memory) and
// expects that check to fail: a check that passes whatever it is given proves nothing.
func TestImageChecksCanFail(t *testing.T) {
	imgs := buildImages(t)
	remove := func(name string) func(*image) { // a path, or the base name of a file
		return func(img *image) {
			if !strings.HasPrefix(name, "/") {
				name = img.findFile(name)
			}
			delete(img.files, name)
		}
	}
	setUser := func(u string) func(*image) { return func(img *image) { img.config.Config.User = u } }
	setEntrypoint := func(argv ...string) func(*image) { return func(img *image) { img.config.Config.Entrypoint = argv } }
	putDynamic := func(at string) func(*image) { // an ELF that needs the loader and libc
		return func(img *image) { img.files[at] = imgs[agentRef].files[imgs[agentRef].findFile("xtables-nft-multi")] }
	}
	putShell := func(img *image) { img.files["/bin/sh"] = imgs[agentRef].files["/usr/bin/dash"] }
	chmod := func(p string, mode int64) func(*image) { return func(img *image) { img.files[p].hdr.Mode = mode } }
	static := map[string][]func(*image){
		"USER 65532:65532":       {setUser("0"), setUser("nonroot"), setUser("")},
		"no shell":               {putShell},
		"CA certificates":        {remove("ca-certificates.crt")},
		"nonroot in /etc/passwd": {remove("passwd")},
	}
	breakages := map[string]map[string][]func(*image){
		agentRef: {
			"runs as root":              {setUser("65532")},
			"entrypoint is the wrapper": {setEntrypoint("/magic-ip-agent"), setEntrypoint("/bin/sh", wrapperPath)},
			"wrapper from hack/iptables-wrapper.sh, 0755": {chmod(wrapperPath, 0o644), remove("iptables-wrapper"),
				func(img *image) { img.files[wrapperPath].data = []byte("#!/bin/sh\nexec /magic-ip-agent \"$@\"\n") }},
			"static agent at /magic-ip-agent":   {remove("magic-ip-agent"), putDynamic("/magic-ip-agent")},
			"iptables nft and legacy run":       {remove("xtables-legacy-multi"), remove("libnftnl.so.11.6.0"), remove("libmnl.so.0.2.0"), remove("ld-linux-x86-64.so.2")},
			"the wrapper's shell and tools run": {remove("/usr/bin/grep"), remove("/usr/bin/dash"), remove("libpcre2-8.so.0.11.2")},
			"xtables extensions the rules use":  {remove("libxt_comment.so"), remove("libxt_statistic.so"), remove("libipt_REJECT.so")},
		},
		webhookRef: {"entrypoint is the webhook": {setEntrypoint("/webhook")}, "static webhook at /magic-ip-webhook": {remove("magic-ip-webhook"), putDynamic("/magic-ip-webhook")}},
		testbinRef: {"entrypoint is testbin": {setEntrypoint("/testbin", "pause")}, "static /testbin": {putDynamic("/testbin")}},
		pauseRef:   {"entrypoint is pause": {setEntrypoint("/pause")}, "static /pause": {remove("pause")}},
	}
	_, wrapper := readDockerfile(t, "hack/iptables-wrapper.sh")
	for ref, checks := range imageChecks(wrapper) {
		for _, c := range checks {
			bs := breakages[ref][c.name]
			if ref != agentRef && len(bs) == 0 {
				bs = static[c.name]
			}
			if len(bs) == 0 {
				t.Errorf("%s: check %q has no breakage case", ref, c.name)
			}
			for i, b := range bs {
				t.Run(fmt.Sprintf("%s/%s/%d", ref, c.name, i), func(t *testing.T) {
					broken := imgs[ref].clone()
					b(broken)
					if err := c.fn(broken); err == nil {
						t.Errorf("check %q passed on the broken image", c.name)
					} else {
						t.Logf("fails as it should: %v", err)
					}
				})
			}
		}
	}
}
