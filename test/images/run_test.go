package images

import (
	"archive/tar"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/magic-ip/magic-ip/test/harness"
)

// extract writes the image's merged filesystem under dir: directories, regular files and
// symbolic links, with their modes and owners (devices and the like are left out).
func (img *image) extract(dir string) error {
	paths := make([]string, 0, len(img.files))
	for p := range img.files {
		paths = append(paths, p)
	}
	slices.Sort(paths) // parents first
	for _, p := range paths {
		e, dst := img.files[p], filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		mode := os.FileMode(e.hdr.Mode & 0o777)
		var err error
		switch e.hdr.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(dst, mode)
		case tar.TypeReg:
			err = os.WriteFile(dst, e.data, mode)
		case tar.TypeSymlink:
			err = os.Symlink(e.hdr.Linkname, dst)
		default:
			continue
		}
		if err == nil && e.hdr.Typeflag != tar.TypeSymlink {
			err = os.Chmod(dst, os.FileMode(e.hdr.Mode&0o777)|modeBits(e.hdr.Mode))
		}
		if err == nil {
			err = os.Lchown(dst, e.hdr.Uid, e.hdr.Gid)
		}
		if err != nil {
			return fmt.Errorf("extract %s: %w", p, err)
		}
	}
	return nil
}

// modeBits maps the setuid, setgid and sticky bits of a tar mode to os.FileMode.
func modeBits(m int64) os.FileMode {
	var out os.FileMode
	for bit, fm := range map[int64]os.FileMode{0o4000: os.ModeSetuid, 0o2000: os.ModeSetgid, 0o1000: os.ModeSticky} {
		if m&bit != 0 {
			out |= fm
		}
	}
	return out
}

// TestAgentImageRuns runs the agent image's own userland, extracted from its tar, in a chroot
// inside a fresh network namespace (the node's, as with hostNetwork): the entrypoint (the
// wrapper) with its dash, grep and ln, the image's iptables in the mode the namespace's rules are
// in, and the agent binary, whose `cleanup` removes a chain of ours planted there. No container
// engine: what runs is exactly what the image holds.
func TestAgentImageRuns(t *testing.T) {
	requireIptablesModes(t)
	imgs := buildImages(t)
	agent := imgs[agentRef]
	rootfs := t.TempDir()
	if err := agent.extract(rootfs); err != nil {
		t.Fatal(err)
	}
	entry := agent.config.Config.Entrypoint
	for i, mode := range []string{"nft", "legacy"} {
		t.Run(mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			ns, err := harness.NewNetns(fmt.Sprintf("%s-imgagent%d", harness.RunPrefix(), i))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := ns.Delete(); err != nil {
					t.Error(err)
				}
			})
			ipt := "iptables-" + mode // this machine's, to plant and read the rules
			for _, args := range [][]string{
				{"-t", "nat", "-N", "MAGIC-IP-SVC-LEFTOVER"},
				{"-A", "INPUT", "-s", "192.0.2.1/32", "-j", "ACCEPT"}, // more rules in this mode than in the other
			} {
				if _, err := ns.Run(ctx, ipt, append([]string{"-w", "5"}, args...)...); err != nil {
					t.Fatal(err)
				}
			}
			out := runInImage(ctx, t, ns, rootfs, agent.config.Config.Env, append(entry, "--version")...)
			if !strings.Contains(out, harness.ImageTag) {
				t.Errorf("the agent's --version does not name the image's version %q:\n%s", harness.ImageTag, out)
			}
			out = runInImage(ctx, t, ns, rootfs, agent.config.Config.Env, append(entry, "cleanup")...)
			if !strings.Contains(out, "using iptables-"+mode) {
				t.Errorf("the wrapper did not choose %s:\n%s", mode, out)
			}
			saved, err := ns.Run(ctx, ipt+"-save", "-t", "nat")
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(saved, "MAGIC-IP-SVC-LEFTOVER") {
				t.Errorf("the agent did not remove its chain from %s:\n%s", mode, saved)
			}
		})
	}
}

// runInImage runs argv chrooted into rootfs, inside ns, in a private mount namespace with /proc
// mounted (iptables-legacy reads /proc/net), with the image's environment only.
func runInImage(ctx context.Context, t *testing.T, ns *harness.Netns, rootfs string, env []string, argv ...string) string {
	t.Helper()
	script := `mount -t proc proc "$0/proc" && exec chroot "$0" "$@"`
	cmd := ns.Command(ctx, "unshare", append([]string{"--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, rootfs}, argv...)...)
	cmd.Env = env // its PATH (/usr/sbin:/usr/bin:...) also finds unshare and chroot on this machine
	out, err := cmd.CombinedOutput()
	t.Logf("%q in the image:\n%s", argv, out)
	if err != nil {
		t.Fatalf("%q in the image: %v", argv, err)
	}
	return string(out)
}
