// Package images checks the container images' recipes without building them (no container engine
// is needed): the Dockerfiles are parsed and checked against the rules below, and the agent's
// iptables wrapper is run for real in a network namespace (that part needs root).
//
// It is its own package, not part of test/e2e, because test/e2e's TestMain builds both binaries
// before any test runs; these checks need nothing but the source tree.
package images

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/magic-ip/magic-ip/test/harness"
)

// VersionPkg is the package whose variables -ldflags -X sets.
const versionPkg = "github.com/magic-ip/magic-ip/internal/version"

// Instruction is one Dockerfile instruction, continuation lines joined.
type Instruction struct {
	Cmd   string   // upper case: FROM, ARG, RUN, COPY, USER, ENTRYPOINT, ...
	Flags []string // leading --name=value flags, e.g. --from=builder, --platform=$BUILDPLATFORM
	Args  string   // the rest, as written (continuations joined with a space)
	Line  int      // first line, 1-based
}

// Stage is one FROM and the instructions up to the next FROM.
type Stage struct {
	From  Instruction
	Image string // the image reference, global ARGs substituted
	Name  string // the AS name, lower case; "" when unnamed
	Body  []Instruction
	Args  map[string]string // ARGs declared in the stage, with their defaults ("" when none)
}

// Dockerfile is a parsed Dockerfile.
type Dockerfile struct {
	Path       string
	GlobalArgs map[string]string // ARGs before the first FROM
	Stages     []Stage
}

// ParseDockerfile parses the subset of the Dockerfile syntax the project uses: comments (a line
// whose first non-blank character is '#', also in the middle of a continued instruction, as
// Docker does), blank lines, and continuation lines ending in a backslash.
func ParseDockerfile(path, text string) (*Dockerfile, error) {
	var instrs []Instruction
	var cur strings.Builder
	start := 0
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		if cur.Len() == 0 {
			start = n
		} else {
			cur.WriteByte(' ')
		}
		if body, ok := strings.CutSuffix(strings.TrimRight(line, " \t"), `\`); ok {
			cur.WriteString(strings.TrimSpace(body))
			continue
		}
		cur.WriteString(trimmed)
		ins, err := parseInstruction(cur.String(), start)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, start, err)
		}
		instrs = append(instrs, ins)
		cur.Reset()
	}
	if cur.Len() > 0 {
		return nil, fmt.Errorf("%s:%d: the last instruction ends with a continuation backslash", path, start)
	}
	df := &Dockerfile{Path: path, GlobalArgs: map[string]string{}}
	for _, ins := range instrs {
		switch {
		case ins.Cmd == "FROM":
			st, err := df.newStage(ins)
			if err != nil {
				return nil, fmt.Errorf("%s:%d: %w", path, ins.Line, err)
			}
			df.Stages = append(df.Stages, st)
		case len(df.Stages) == 0:
			if ins.Cmd != "ARG" {
				return nil, fmt.Errorf("%s:%d: %s before the first FROM (only ARG may come first)", path, ins.Line, ins.Cmd)
			}
			addArgs(df.GlobalArgs, ins.Args)
		default:
			st := &df.Stages[len(df.Stages)-1]
			st.Body = append(st.Body, ins)
			if ins.Cmd == "ARG" {
				addArgs(st.Args, ins.Args)
			}
		}
	}
	if len(df.Stages) == 0 {
		return nil, fmt.Errorf("%s: no FROM", path)
	}
	return df, nil
}

var knownInstructions = []string{"FROM", "ARG", "RUN", "COPY", "ADD", "USER", "ENTRYPOINT", "CMD", "ENV", "LABEL",
	"WORKDIR", "EXPOSE", "VOLUME", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "ONBUILD"}

func parseInstruction(s string, line int) (Instruction, error) {
	cmd, rest, _ := strings.Cut(s, " ")
	ins := Instruction{Cmd: strings.ToUpper(cmd), Line: line}
	if !slices.Contains(knownInstructions, ins.Cmd) {
		return ins, fmt.Errorf("unknown instruction %q", cmd)
	}
	rest = strings.TrimSpace(rest)
	for strings.HasPrefix(rest, "--") {
		flag, after, _ := strings.Cut(rest, " ")
		ins.Flags = append(ins.Flags, flag)
		rest = strings.TrimSpace(after)
	}
	ins.Args = rest
	return ins, nil
}

// addArgs records "ARG A=1 B" as A="1", B="".
func addArgs(into map[string]string, args string) {
	for _, f := range strings.Fields(args) {
		name, def, _ := strings.Cut(f, "=")
		into[name] = strings.Trim(def, `"'`)
	}
}

func (df *Dockerfile) newStage(ins Instruction) (Stage, error) {
	f := strings.Fields(ins.Args)
	st := Stage{From: ins, Args: map[string]string{}}
	switch {
	case len(f) == 1:
	case len(f) == 3 && strings.EqualFold(f[1], "AS"):
		st.Name = strings.ToLower(f[2])
	default:
		return st, fmt.Errorf("FROM %q: want IMAGE [AS NAME]", ins.Args)
	}
	img, err := expand(f[0], df.GlobalArgs)
	if err != nil {
		return st, fmt.Errorf("FROM %s: %w", f[0], err)
	}
	st.Image = img
	return st, nil
}

var varRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)`)

// expand substitutes $NAME, ${NAME} and ${NAME:-default} from args (a FROM sees only the ARGs
// declared before the first FROM). A name with no value and no default is an error: the image
// reference would depend on a --build-arg.
func expand(s string, args map[string]string) (string, error) {
	var err error
	out := varRef.ReplaceAllStringFunc(s, func(m string) string {
		sub := varRef.FindStringSubmatch(m)
		name := sub[1] + sub[4]
		if v := args[name]; v != "" {
			return v
		}
		if sub[2] != "" {
			return sub[3]
		}
		err = fmt.Errorf("$%s has no default (declare ARG %s=... before the first FROM)", name, name)
		return m
	})
	return out, err
}

// Final is the last stage: the image that ships.
func (df *Dockerfile) Final() *Stage { return &df.Stages[len(df.Stages)-1] }

// Stage returns the stage named name, or nil.
func (df *Dockerfile) Stage(name string) *Stage {
	for i := range df.Stages {
		if df.Stages[i].Name == strings.ToLower(name) {
			return &df.Stages[i]
		}
	}
	return nil
}

// All returns the stage's instructions with command cmd.
func (st *Stage) All(cmd string) []Instruction {
	var out []Instruction
	for _, ins := range st.Body {
		if ins.Cmd == cmd {
			out = append(out, ins)
		}
	}
	return out
}

// Last returns the stage's last instruction with command cmd, or nil.
func (st *Stage) Last(cmd string) *Instruction {
	all := st.All(cmd)
	if len(all) == 0 {
		return nil
	}
	return &all[len(all)-1]
}

// flag returns the value of --name=value, or "".
func (ins Instruction) flag(name string) string {
	for _, f := range ins.Flags {
		if v, ok := strings.CutPrefix(f, "--"+name+"="); ok {
			return v
		}
	}
	return ""
}

// execForm decodes a JSON-array ENTRYPOINT or CMD; shell form is an error (signals would go to
// /bin/sh, not to the program).
func (ins Instruction) execForm() ([]string, error) {
	var argv []string
	if err := json.Unmarshal([]byte(ins.Args), &argv); err != nil || len(argv) == 0 {
		return nil, fmt.Errorf("line %d: %s %s is not in exec form (a JSON array)", ins.Line, ins.Cmd, ins.Args)
	}
	return argv, nil
}

// imageRef splits an image reference into name, tag and digest.
func imageRef(ref string) (name, tag, digest string) {
	name, digest, _ = strings.Cut(ref, "@")
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		name, tag = name[:i], name[i+1:]
	}
	return name, tag, digest
}

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// ---- the checks ----

// check is one rule about a Dockerfile; it returns what is wrong, or nil.
type check struct {
	name string
	fn   func(*Dockerfile) error
}

func checkMultiStage(df *Dockerfile) error {
	if len(df.Stages) < 2 {
		return fmt.Errorf("%d FROM, want a multi-stage build (a builder and a final stage)", len(df.Stages))
	}
	return nil
}

func checkPinned(df *Dockerfile) error {
	var bad []string
	for i, st := range df.Stages {
		if st.Image == "scratch" || (slices.ContainsFunc(df.Stages[:i], func(s Stage) bool { return s.Name == st.Image })) {
			continue // an earlier stage, not an image
		}
		_, tag, digest := imageRef(st.Image)
		switch {
		case digest != "" && !digestRE.MatchString(digest):
			bad = append(bad, fmt.Sprintf("line %d: %s: malformed digest", st.From.Line, st.Image))
		case digest != "":
		case tag == "":
			bad = append(bad, fmt.Sprintf("line %d: %s has no tag (means latest)", st.From.Line, st.Image))
		case tag == "latest":
			bad = append(bad, fmt.Sprintf("line %d: %s is not pinned", st.From.Line, st.Image))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("unpinned base images: %s", strings.Join(bad, "; "))
	}
	return nil
}

// builderStage is the stage the final stage copies its binary from.
func builderStage(df *Dockerfile) (*Stage, error) {
	for _, c := range df.Final().All("COPY") {
		if from := c.flag("from"); from != "" {
			if st := df.Stage(from); st != nil {
				return st, nil
			}
			return nil, fmt.Errorf("line %d: COPY --from=%s names no stage", c.Line, from)
		}
	}
	return nil, fmt.Errorf("the final stage copies nothing from a builder stage (COPY --from=...)")
}

var goPatchTag = regexp.MustCompile(`^1\.\d+\.\d+(-[a-z0-9.]+)?$`)

func checkBuilderGoPinned(df *Dockerfile) error {
	st, err := builderStage(df)
	if err != nil {
		return err
	}
	name, tag, digest := imageRef(st.Image)
	if !strings.HasSuffix(name, "golang") {
		return fmt.Errorf("builder stage %q is %s, want the golang image", st.Name, st.Image)
	}
	if digest == "" && !goPatchTag.MatchString(tag) {
		return fmt.Errorf("builder image %s: pin an exact Go patch version (e.g. golang:1.26.8-bookworm)", st.Image)
	}
	return nil
}

// goBuild returns the builder's RUN that runs go build.
func goBuild(df *Dockerfile) (*Stage, *Instruction, error) {
	st, err := builderStage(df)
	if err != nil {
		return nil, nil, err
	}
	for _, r := range st.All("RUN") {
		if strings.Contains(r.Args, "go build") {
			return st, &r, nil
		}
	}
	return nil, nil, fmt.Errorf("builder stage %q has no RUN ... go build", st.Name)
}

func checkBuildFlags(df *Dockerfile) error {
	_, run, err := goBuild(df)
	if err != nil {
		return err
	}
	var missing []string
	if !regexp.MustCompile(`(^|\s)CGO_ENABLED=0(\s|$)`).MatchString(run.Args) {
		missing = append(missing, "CGO_ENABLED=0")
	}
	if !regexp.MustCompile(`\s-trimpath(\s|$)`).MatchString(run.Args) {
		missing = append(missing, "-trimpath")
	}
	if !strings.Contains(run.Args, "-ldflags") {
		missing = append(missing, "-ldflags")
	}
	if len(missing) > 0 {
		return fmt.Errorf("line %d: go build lacks %s", run.Line, strings.Join(missing, ", "))
	}
	return nil
}

// checkVersionLdflags: -X sets Version, Commit and BuildDate from ARGs the builder stage declares
// (an ARG declared only before FROM or in another stage would expand to "" here).
func checkVersionLdflags(df *Dockerfile) error {
	st, run, err := goBuild(df)
	if err != nil {
		return err
	}
	var problems []string
	for v, arg := range map[string]string{"Version": "VERSION", "Commit": "COMMIT", "BuildDate": "BUILD_DATE"} {
		re := regexp.MustCompile(`-X\s+'?` + regexp.QuoteMeta(versionPkg+"."+v) + `=\$\{?` + arg + `\}?`)
		if !re.MatchString(run.Args) {
			problems = append(problems, fmt.Sprintf("-X %s.%s=${%s} missing", versionPkg, v, arg))
			continue
		}
		if _, ok := st.Args[arg]; !ok {
			problems = append(problems, fmt.Sprintf("ARG %s not declared in stage %q", arg, st.Name))
		}
	}
	if len(problems) > 0 {
		slices.Sort(problems)
		return fmt.Errorf("line %d: %s", run.Line, strings.Join(problems, "; "))
	}
	return nil
}

// finalUser returns the final stage's last USER as uid and gid ("" when not given).
func finalUser(df *Dockerfile) (uid, gid string, err error) {
	u := df.Final().Last("USER")
	if u == nil {
		return "", "", fmt.Errorf("the final stage sets no USER")
	}
	uid, gid, _ = strings.Cut(u.Args, ":")
	return uid, gid, nil
}

func checkDistrolessNonRoot(df *Dockerfile) error {
	name, _, _ := imageRef(df.Final().Image)
	if !strings.HasPrefix(name, "gcr.io/distroless/") {
		return fmt.Errorf("final stage is %s, want a gcr.io/distroless image", df.Final().Image)
	}
	uid, gid, err := finalUser(df)
	if err != nil {
		return err
	}
	numeric := regexp.MustCompile(`^[0-9]+$`)
	if !numeric.MatchString(uid) || (gid != "" && !numeric.MatchString(gid)) {
		return fmt.Errorf("USER %s:%s is not numeric: runAsNonRoot can only verify a numeric user", uid, gid)
	}
	if uid == "0" {
		return fmt.Errorf("USER %s runs as root", uid)
	}
	return nil
}

func checkEntrypoint(want ...string) func(*Dockerfile) error {
	return func(df *Dockerfile) error {
		ep := df.Final().Last("ENTRYPOINT")
		if ep == nil {
			return fmt.Errorf("the final stage has no ENTRYPOINT")
		}
		argv, err := ep.execForm()
		if err != nil {
			return err
		}
		if !slices.Equal(argv, want) {
			return fmt.Errorf("ENTRYPOINT %q, want %q", argv, want)
		}
		return nil
	}
}

// checkCopiesTo: the final stage puts something at dst (a binary from the builder, the wrapper).
func checkCopiesTo(dst string) func(*Dockerfile) error {
	return func(df *Dockerfile) error {
		for _, c := range df.Final().All("COPY") {
			f := strings.Fields(c.Args)
			if len(f) >= 2 && f[len(f)-1] == dst {
				return nil
			}
		}
		return fmt.Errorf("the final stage copies nothing to %s", dst)
	}
}

// checkWrapperInstalled: the wrapper script from the repository is copied in, executable, to the
// path ENTRYPOINT runs.
func checkWrapperInstalled(src, dst string) func(*Dockerfile) error {
	return func(df *Dockerfile) error {
		for _, c := range df.Final().All("COPY") {
			f := strings.Fields(c.Args)
			if len(f) == 2 && f[0] == src && f[1] == dst && c.flag("from") == "" {
				if mode := c.flag("chmod"); mode != "" && mode != "0755" && mode != "755" && mode != "0555" && mode != "555" {
					return fmt.Errorf("line %d: %s copied with --chmod=%s, want it executable (0755)", c.Line, src, mode)
				}
				return nil
			}
		}
		return fmt.Errorf("the final stage does not COPY %s to %s", src, dst)
	}
}

var debianRelease = regexp.MustCompile(`^(12\.\d+-slim|bookworm-\d{8}-slim)$`)

func checkDebianSlim(df *Dockerfile) error {
	name, tag, digest := imageRef(df.Final().Image)
	if name != "debian" && name != "docker.io/library/debian" {
		return fmt.Errorf("final stage is %s, want debian (bookworm, slim)", df.Final().Image)
	}
	if digest == "" && !debianRelease.MatchString(tag) {
		return fmt.Errorf("final stage debian:%s: pin a point release (12.N-slim) or a dated tag (bookworm-YYYYMMDD-slim), not a moving tag", tag)
	}
	return nil
}

// aptPackages returns the packages the final stage's RUNs install with apt-get (or apt) install.
func aptPackages(df *Dockerfile) []string {
	var pkgs []string
	for _, r := range df.Final().All("RUN") {
		for _, cmd := range regexp.MustCompile(`&&|\|\||;`).Split(r.Args, -1) {
			var words []string // the command's words, options dropped
			for _, w := range strings.Fields(cmd) {
				if !strings.HasPrefix(w, "-") {
					words = append(words, w)
				}
			}
			if len(words) >= 2 && (words[0] == "apt-get" || words[0] == "apt") && words[1] == "install" {
				pkgs = append(pkgs, words[2:]...)
			}
		}
	}
	return pkgs
}

func checkOnlyIptables(df *Dockerfile) error {
	pkgs := aptPackages(df)
	if !slices.Equal(pkgs, []string{"iptables"}) {
		return fmt.Errorf("the final stage installs %q, want exactly [iptables] (it provides iptables-nft and iptables-legacy)", pkgs)
	}
	for _, r := range df.Final().All("RUN") {
		if strings.Contains(r.Args, "apt-get install") && !strings.Contains(r.Args, "--no-install-recommends") {
			return fmt.Errorf("line %d: apt-get install without --no-install-recommends pulls in more than iptables", r.Line)
		}
	}
	return nil
}

// checkSourcesCopied: every package of the module the binary imports is under a directory the
// builder COPYs in and the .dockerignore lets through, so the image build compiles.
func checkSourcesCopied(mainPkg string) func(*Dockerfile) error {
	return func(df *Dockerfile) error {
		st, err := builderStage(df)
		if err != nil {
			return err
		}
		var copied []string
		for _, c := range st.All("COPY") {
			if c.flag("from") != "" {
				continue
			}
			f := strings.Fields(c.Args)
			copied = append(copied, f[:len(f)-1]...)
		}
		root := filepath.Dir(df.Path)
		allowed, err := dockerignoreAllows(filepath.Join(root, ".dockerignore"))
		if err != nil {
			return err
		}
		cmd := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", mainPkg)
		cmd.Dir = root
		out, err := cmd.Output()
		if err != nil {
			return fmt.Errorf("go list %s: %w", mainPkg, err)
		}
		var problems []string
		for _, need := range append([]string{"go.mod", "go.sum"}, modulePackages(string(out))...) {
			under := func(dir string) bool {
				return need == strings.TrimSuffix(dir, "/") || strings.HasPrefix(need, strings.TrimSuffix(dir, "/")+"/")
			}
			if !slices.ContainsFunc(copied, under) {
				problems = append(problems, need+" is not COPYed into the builder")
			}
			if !slices.ContainsFunc(allowed, under) {
				problems = append(problems, need+" is excluded by .dockerignore")
			}
		}
		if len(problems) > 0 {
			return fmt.Errorf("%s", strings.Join(problems, "; "))
		}
		return nil
	}
}

// modulePackages turns go list output into directories relative to the module root.
func modulePackages(list string) []string {
	var dirs []string
	for _, p := range strings.Fields(list) {
		if rel, ok := strings.CutPrefix(p, "github.com/magic-ip/magic-ip/"); ok {
			dirs = append(dirs, rel)
		}
	}
	return dirs
}

// dockerignoreAllows reads an allow-list .dockerignore ("*" then "!path" lines) and returns the
// let-through paths.
func dockerignoreAllows(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var allowed []string
	excludeAll := false
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "*":
			excludeAll = true
		case strings.HasPrefix(l, "!"):
			allowed = append(allowed, strings.TrimPrefix(l, "!"))
		}
	}
	if !excludeAll {
		return nil, fmt.Errorf("%s: want an allow-list (a '*' line, then '!path' lines)", path)
	}
	return allowed, nil
}

// dockerfileChecks are the rules per Dockerfile.
func dockerfileChecks() map[string][]check {
	common := []check{
		{"multi-stage", checkMultiStage},
		{"every FROM pinned", checkPinned},
		{"builder Go pinned to a patch version", checkBuilderGoPinned},
		{"go build CGO_ENABLED=0 -trimpath -ldflags", checkBuildFlags},
		{"ldflags set the version package from ARGs", checkVersionLdflags},
	}
	return map[string][]check{
		"Dockerfile.webhook": append(slices.Clone(common),
			check{"final stage distroless with numeric non-root USER", checkDistrolessNonRoot},
			check{"binary copied to /magic-ip-webhook", checkCopiesTo("/magic-ip-webhook")},
			check{"entrypoint is the webhook", checkEntrypoint("/magic-ip-webhook")},
			check{"sources copied", checkSourcesCopied("./cmd/magic-ip-webhook")},
		),
		"Dockerfile.agent": append(slices.Clone(common),
			check{"final stage debian slim, pinned release", checkDebianSlim},
			check{"installs iptables and nothing else", checkOnlyIptables},
			check{"binary copied to /magic-ip-agent", checkCopiesTo("/magic-ip-agent")},
			check{"wrapper installed", checkWrapperInstalled("hack/iptables-wrapper.sh", wrapperPath)},
			check{"entrypoint is the wrapper", checkEntrypoint(wrapperPath)},
			check{"sources copied", checkSourcesCopied("./cmd/magic-ip-agent")},
		),
	}
}

// wrapperPath is where Dockerfile.agent installs hack/iptables-wrapper.sh.
const wrapperPath = "/usr/local/bin/iptables-wrapper"

func readDockerfile(t *testing.T, name string) (path, text string) {
	t.Helper()
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(root, name)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, string(b)
}

// TestDockerfiles runs every check on the real Dockerfiles.
func TestDockerfiles(t *testing.T) {
	for file, checks := range dockerfileChecks() {
		path, text := readDockerfile(t, file)
		df, err := ParseDockerfile(path, text)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range checks {
			t.Run(file+"/"+c.name, func(t *testing.T) {
				if err := c.fn(df); err != nil {
					t.Errorf("%s: %v", file, err)
				}
			})
		}
	}
}

// TestDockerfileChecksCanFail breaks each Dockerfile in one way per check and expects that check
// to fail: a check that passes whatever it is given proves nothing.
func TestDockerfileChecksCanFail(t *testing.T) {
	type breakage struct{ old, new string }
	// For each file and check name: edits to the real file's text that must make the check fail.
	cases := map[string]map[string][]breakage{
		"Dockerfile.webhook": {
			"multi-stage": {{"FROM gcr.io/distroless/static-debian12:nonroot", "COPY --from=builder /out /out"}},
			"every FROM pinned": {
				{"golang:1.26.8-bookworm", "golang:latest"},
				{"gcr.io/distroless/static-debian12:nonroot", "gcr.io/distroless/static-debian12"},
				{"gcr.io/distroless/static-debian12:nonroot", "gcr.io/distroless/static-debian12@sha256:1234"},
				{"FROM --platform=$BUILDPLATFORM golang:1.26.8-bookworm", "ARG GO_TAG\nFROM golang:${GO_TAG}"},
				{"FROM --platform=$BUILDPLATFORM golang:1.26.8-bookworm", "ARG GO_TAG=latest\nFROM golang:${GO_TAG}"},
			},
			"builder Go pinned to a patch version": {{"golang:1.26.8-bookworm", "golang:1.26-bookworm"}},
			"go build CGO_ENABLED=0 -trimpath -ldflags": {
				{"CGO_ENABLED=0", "CGO_ENABLED=1"},
				{"go build -trimpath", "go build"},
			},
			"ldflags set the version package from ARGs": {
				{"internal/version.Commit=${COMMIT}", "internal/version.Commit=abc"},
				{"ARG BUILD_DATE=unknown\nWORKDIR", "WORKDIR"},
				{"internal/version.Version", "internal/versions.Version"},
			},
			"final stage distroless with numeric non-root USER": {
				{"USER 65532:65532", "USER nonroot:nonroot"},
				{"USER 65532:65532", "USER 0"},
				{"USER 65532:65532\n", ""},
				{"FROM gcr.io/distroless/static-debian12:nonroot", "FROM debian:12.11-slim"},
			},
			"binary copied to /magic-ip-webhook": {{"/out/magic-ip-webhook /magic-ip-webhook", "/out/magic-ip-webhook /webhook"}},
			"entrypoint is the webhook": {
				{`ENTRYPOINT ["/magic-ip-webhook"]`, `ENTRYPOINT /magic-ip-webhook`},
				{`ENTRYPOINT ["/magic-ip-webhook"]`, `ENTRYPOINT ["/webhook"]`},
			},
			"sources copied": {{"COPY certs/ certs/\n", ""}},
		},
		"Dockerfile.agent": {
			"multi-stage": {{"FROM debian:12.11-slim\n", ""}},
			"every FROM pinned": {
				{"FROM debian:12.11-slim", "FROM debian"},
				{"FROM debian:12.11-slim", "FROM debian:latest"},
			},
			"builder Go pinned to a patch version":      {{"golang:1.26.8-bookworm", "golang:bookworm"}},
			"go build CGO_ENABLED=0 -trimpath -ldflags": {{"-ldflags", "-gcflags"}},
			"ldflags set the version package from ARGs": {{"ARG VERSION=dev\nARG COMMIT", "ARG COMMIT"}},
			"final stage debian slim, pinned release": {
				{"FROM debian:12.11-slim", "FROM debian:bookworm-slim"},
				{"FROM debian:12.11-slim", "FROM ubuntu:24.04"},
			},
			"installs iptables and nothing else": {
				{"--no-install-recommends iptables", "--no-install-recommends iptables curl"},
				{"--no-install-recommends iptables", "--no-install-recommends nftables"},
				{"install -y --no-install-recommends iptables", "install -y iptables"},
			},
			"binary copied to /magic-ip-agent": {{"/out/magic-ip-agent /magic-ip-agent", "/out/magic-ip-agent /usr/bin/magic-ip-agent"}},
			"wrapper installed": {
				{"COPY --chmod=0755 hack/iptables-wrapper.sh", "COPY --chmod=0644 hack/iptables-wrapper.sh"},
				{"hack/iptables-wrapper.sh /usr/local/bin/iptables-wrapper", "hack/iptables-wrapper.sh /iptables-wrapper"},
			},
			"entrypoint is the wrapper": {
				{`ENTRYPOINT ["/usr/local/bin/iptables-wrapper"]`, `ENTRYPOINT ["/magic-ip-agent"]`},
				{`ENTRYPOINT ["/usr/local/bin/iptables-wrapper"]`, `ENTRYPOINT /usr/local/bin/iptables-wrapper`},
			},
			"sources copied": {{"COPY internal/ internal/\n", ""}},
		},
	}
	for file, checks := range dockerfileChecks() {
		path, text := readDockerfile(t, file)
		for _, c := range checks {
			bs := cases[file][c.name]
			if len(bs) == 0 {
				t.Errorf("%s: check %q has no breakage case", file, c.name)
			}
			for i, b := range bs {
				t.Run(fmt.Sprintf("%s/%s/%d", file, c.name, i), func(t *testing.T) {
					if !strings.Contains(text, b.old) {
						t.Fatalf("%s no longer contains %q: update the case", file, b.old)
					}
					broken := strings.Replace(text, b.old, b.new, 1)
					df, err := ParseDockerfile(path, broken)
					if err != nil {
						return // unparseable counts as failing
					}
					if err := c.fn(df); err == nil {
						t.Errorf("check %q passed after replacing %q with %q", c.name, b.old, b.new)
					} else {
						t.Logf("fails as it should: %v", err)
					}
				})
			}
		}
	}
}

// TestParseDockerfile covers the parser itself: comments, continuations, flags, ARG scoping.
func TestParseDockerfile(t *testing.T) {
	text := `# syntax=docker/dockerfile:1
ARG BASE_TAG=1.2.3
ARG REG
FROM --platform=$BUILDPLATFORM example.com:5000/base:${BASE_TAG} AS Build
ARG VERSION=dev \
    COMMIT
RUN echo one \
    # a comment inside a continued instruction is dropped
    two \
  three

COPY --from=build --chmod=0755 a b
FROM ${REG:-docker.io}/lib/final@sha256:` + strings.Repeat("ab", 32) + `
USER 65532:65532
ENTRYPOINT ["/x", "-y"]
`
	df, err := ParseDockerfile("t", text)
	if err != nil {
		t.Fatal(err)
	}
	if len(df.Stages) != 2 {
		t.Fatalf("%d stages, want 2", len(df.Stages))
	}
	b := df.Stages[0]
	if b.Image != "example.com:5000/base:1.2.3" || b.Name != "build" || b.From.flag("platform") != "$BUILDPLATFORM" || b.From.Line != 4 {
		t.Errorf("stage 0 = %+v", b)
	}
	if b.Args["VERSION"] != "dev" || b.Args["COMMIT"] != "" || len(b.Args) != 2 {
		t.Errorf("stage 0 args = %v", b.Args)
	}
	if run := b.Last("RUN"); run == nil || run.Args != "echo one two three" || run.Line != 7 {
		t.Errorf("RUN = %+v, want 'echo one two three' at line 7", run)
	}
	if cp := b.Last("COPY"); cp == nil || cp.flag("from") != "build" || cp.flag("chmod") != "0755" || cp.Args != "a b" {
		t.Errorf("COPY = %+v", cp)
	}
	f := df.Final()
	if name, tag, digest := imageRef(f.Image); name != "docker.io/lib/final" || tag != "" || !digestRE.MatchString(digest) {
		t.Errorf("final image %q split into %q %q %q", f.Image, name, tag, digest)
	}
	if _, tag, _ := imageRef(b.Image); tag != "1.2.3" {
		t.Errorf("tag of %q = %q (a registry port is not a tag)", b.Image, tag)
	}
	if argv, err := f.Last("ENTRYPOINT").execForm(); err != nil || !slices.Equal(argv, []string{"/x", "-y"}) {
		t.Errorf("ENTRYPOINT = %q, %v", argv, err)
	}
	for name, bad := range map[string]string{
		"dangling continuation": "FROM a:1 \\\n",
		"RUN before FROM":       "RUN x\nFROM a:1\n",
		"unknown instruction":   "FROM a:1\nFROBNICATE\n",
		"no FROM":               "ARG X=1\n",
		"FROM with junk":        "FROM a:1 AS b c\n",
		"unset ARG in FROM":     "ARG T\nFROM a:${T}\n",
	} {
		if _, err := ParseDockerfile("t", bad); err == nil {
			t.Errorf("%s: parsed without error:\n%s", name, bad)
		}
	}
}
