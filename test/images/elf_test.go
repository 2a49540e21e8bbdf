package images

import (
	"bytes"
	"debug/elf"
	"fmt"
	"path"
	"runtime"
	"strings"
)

// elfMachine is the ELF machine of this build's GOARCH (the images are built for it).
func elfMachine() elf.Machine {
	switch runtime.GOARCH {
	case "arm64":
		return elf.EM_AARCH64
	default:
		return elf.EM_X86_64
	}
}

// openELF parses the regular file p of the image as an ELF executable or library for this
// machine's architecture.
func (img *image) openELF(p string) (*elf.File, error) {
	e, err := img.file(p)
	if err != nil {
		return nil, err
	}
	f, err := elf.NewFile(bytes.NewReader(e.data))
	if err != nil {
		return nil, fmt.Errorf("%s is not an ELF file: %w", p, err)
	}
	if f.Machine != elfMachine() {
		return nil, fmt.Errorf("%s is for %s, want %s", p, f.Machine, elfMachine())
	}
	return f, nil
}

// interp returns the program interpreter (PT_INTERP) of an ELF file, "" for a static one.
func interp(f *elf.File) (string, error) {
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				return "", fmt.Errorf("read PT_INTERP: %w", err)
			}
			return strings.TrimRight(string(b), "\x00"), nil
		}
	}
	return "", nil
}

// checkStatic: p is an executable that needs no dynamic loader and no shared library.
func (img *image) checkStatic(p string) error {
	f, err := img.openELF(p)
	if err != nil {
		return err
	}
	in, err := interp(f)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	libs, _ := f.ImportedLibraries()
	if in != "" || len(libs) > 0 {
		return fmt.Errorf("%s is dynamically linked (interpreter %q, libraries %q)", p, in, libs)
	}
	return nil
}

// libDirs are where the image's dynamic loader looks: /etc/ld.so.conf.d/*.conf, then the defaults.
func (img *image) libDirs() []string {
	var dirs []string
	for name, e := range img.files {
		if path.Dir(name) != "/etc/ld.so.conf.d" || !strings.HasSuffix(name, ".conf") || e.data == nil {
			continue
		}
		for _, l := range strings.Split(string(e.data), "\n") {
			if l = strings.TrimSpace(l); strings.HasPrefix(l, "/") {
				dirs = append(dirs, l)
			}
		}
	}
	return append(dirs, "/lib", "/usr/lib")
}

// checkDynamic: the executable p, its dynamic loader, and every shared library it needs (and
// they need, transitively) are in the image for this architecture.
func (img *image) checkDynamic(p string) error {
	f, err := img.openELF(p)
	if err != nil {
		return err
	}
	in, err := interp(f)
	if err != nil || in == "" {
		return fmt.Errorf("%s: no dynamic loader (%v)", p, err)
	}
	if _, err := img.openELF(in); err != nil {
		return fmt.Errorf("%s: loader: %w", p, err)
	}
	dirs := img.libDirs()
	seen := map[string]bool{}
	queue := []*elf.File{f}
	for len(queue) > 0 {
		libs, err := queue[0].ImportedLibraries()
		queue = queue[1:]
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		for _, lib := range libs {
			if seen[lib] {
				continue
			}
			seen[lib] = true
			lf, err := img.findLib(dirs, lib)
			if err != nil {
				return fmt.Errorf("%s needs %s: %w", p, lib, err)
			}
			queue = append(queue, lf)
		}
	}
	return nil
}

func (img *image) findLib(dirs []string, lib string) (*elf.File, error) {
	for _, d := range dirs {
		if f, err := img.openELF(path.Join(d, lib)); err == nil {
			return f, nil
		}
	}
	return nil, fmt.Errorf("not found in %s", strings.Join(dirs, ", "))
}
