package harness

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// trackHierarchy is the cgroup v1 hierarchy whose subtree /<node cgroup> holds every process of a
// real node: the start script puts itself there before it forks, and runc puts containers below it.
const trackHierarchy = "pids"

// cgroupMounts lists the mount points of the machine's cgroup hierarchies (v1 and, on hybrid
// machines, the v2 one), from /proc/self/mountinfo.
func cgroupMounts() (v1, all []string, err error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "<id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <type> <source> <super options>"
		fields := strings.Fields(sc.Text())
		sep := indexOf(fields, "-")
		if sep < 0 || sep+1 >= len(fields) || len(fields) < 5 {
			continue
		}
		switch fields[sep+1] {
		case "cgroup":
			v1 = append(v1, fields[4])
			all = append(all, fields[4])
		case "cgroup2":
			all = append(all, fields[4])
		}
	}
	if err := sc.Err(); err != nil {
		return nil, nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return v1, all, nil
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// createNodeCgroup makes /<name> in every cgroup v1 hierarchy, as the kubelet's cgroupRoot must
// exist in all of them; cpuset gets its parent's cpus and mems (an empty cpuset takes no task).
// It returns the directory in the tracking hierarchy.
func createNodeCgroup(name string) (string, error) {
	v1, _, err := cgroupMounts()
	if err != nil {
		return "", err
	}
	track := ""
	for _, m := range v1 {
		dir := filepath.Join(m, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return "", fmt.Errorf("cgroup %s: %w", dir, err)
		}
		if err := copyCpuset(m, dir); err != nil {
			return "", err
		}
		if filepath.Base(m) == trackHierarchy {
			track = dir
		}
	}
	if track == "" {
		return "", fmt.Errorf("cgroup v1 hierarchy %q is not mounted (mounted: %v): real nodes need cgroup v1", trackHierarchy, v1)
	}
	return track, nil
}

// copyCpuset copies cpuset.cpus and cpuset.mems from parent to dir in the cpuset hierarchy.
func copyCpuset(parent, dir string) error {
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		b, err := os.ReadFile(filepath.Join(parent, f))
		if errors.Is(err, fs.ErrNotExist) {
			return nil // not the cpuset hierarchy
		}
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			return fmt.Errorf("cgroup %s: %s: %w", dir, f, err)
		}
	}
	return nil
}

// CgroupProcs lists every process in the cgroup directory dir and its descendants.
func CgroupProcs(dir string) ([]int, error) {
	var pids []int
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while walking
			}
			return err
		}
		if d.IsDir() || d.Name() != "cgroup.procs" {
			return nil
		}
		b, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids, err
}

// killCgroup SIGKILLs every process in the subtree of dir until it is empty (processes may fork
// while it runs) or the timeout passes.
func killCgroup(dir string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pids, err := CgroupProcs(dir)
		if err != nil {
			return fmt.Errorf("list processes in %s: %w", dir, err)
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v still in %s after %s", pids, dir, timeout)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond) // a dying process leaves cgroup.procs a moment later
	}
}

// removeNodeCgroup removes /<name> and everything below it in every cgroup hierarchy (the kubelet
// and runc make kubepods/... below it, also in hierarchies the harness did not create it in).
func removeNodeCgroup(name string) error {
	_, all, err := cgroupMounts()
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range all {
		errs = append(errs, removeCgroupTree(filepath.Join(m, name)))
	}
	return errors.Join(errs...)
}

// removeCgroupTree removes the cgroup directory dir and its descendants, deepest first (cgroup
// directories are removed with rmdir, not by deleting their files).
func removeCgroupTree(dir string) error {
	var dirs []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	for _, d := range dirs {
		if err := syscall.Rmdir(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove cgroup %s: %w", d, err)
		}
	}
	return nil
}

// NodeCgroupsLeft lists the cgroup directories named name that exist in any hierarchy.
func NodeCgroupsLeft(name string) ([]string, error) {
	_, all, err := cgroupMounts()
	if err != nil {
		return nil, err
	}
	var left []string
	for _, m := range all {
		if _, err := os.Stat(filepath.Join(m, name)); err == nil {
			left = append(left, filepath.Join(m, name))
		}
	}
	return left, nil
}
