// Package flagenv binds command-line flags with environment-variable twins, for both binaries.
//
// An environment value is parsed by the very flag.Value that parses the command line, so it is
// accepted or refused exactly as the flag would be (a malformed value is an error naming the
// variable, never a silent default). A flag given on the command line wins over its variable.
// The help text of each flag names its variable.
package flagenv

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Set is a flag.FlagSet whose flags may have environment twins.
type Set struct {
	fs     *flag.FlagSet
	lookup func(string) (string, bool)
	// env maps a flag name to its environment variable; order is the binding order.
	env   map[string]string
	order []string
}

// New binds flags on fs; lookup reads the environment (os.LookupEnv in a binary).
func New(fs *flag.FlagSet, lookup func(string) (string, bool)) *Set {
	return &Set{fs: fs, lookup: lookup, env: map[string]string{}}
}

// NewCommand is New on a fresh flag set for a command: errors are returned, and --help prints
// header, then every flag.
func NewCommand(name, header string, lookup func(string) (string, bool)) *Set {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), header)
		fs.PrintDefaults()
	}
	return New(fs, lookup)
}

// FlagSet is the underlying flag set (for flags without a twin, such as --version).
func (s *Set) FlagSet() *flag.FlagSet { return s.fs }

// Env is the environment variable of a flag, "" when it has none.
func (s *Set) Env(flagName string) string { return s.env[flagName] }

// Var binds v as flag name with environment twin env; v holds the default.
func (s *Set) Var(v flag.Value, name, env, usage string) {
	s.fs.Var(v, name, usage)
	s.twin(name, env)
}

// String binds a string flag.
func (s *Set) String(p *string, name, env, def, usage string) {
	s.fs.StringVar(p, name, def, usage)
	s.twin(name, env)
}

// Bool binds a boolean flag (strconv.ParseBool syntax: 1, t, true, 0, f, false...).
func (s *Set) Bool(p *bool, name, env string, def bool, usage string) {
	s.fs.BoolVar(p, name, def, usage)
	s.twin(name, env)
}

// Int binds an integer flag.
func (s *Set) Int(p *int, name, env string, def int, usage string) {
	s.fs.IntVar(p, name, def, usage)
	s.twin(name, env)
}

// Duration binds a time.Duration flag ("10s", "1m30s").
func (s *Set) Duration(p *time.Duration, name, env string, def time.Duration, usage string) {
	s.fs.DurationVar(p, name, def, usage)
	s.twin(name, env)
}

// List binds a comma-separated list: items are trimmed and empty items dropped (so "eth0," is
// [eth0]); check, when not nil, refuses an item. A later value replaces the whole list.
func (s *Set) List(p *[]string, name, env string, def []string, check func(string) error, usage string) {
	*p = def
	s.Var(&listValue{p: p, check: check}, name, env, usage)
}

// twin records env as the twin of the flag just defined and names it in the help text. (The
// typed helpers use the standard library's values, so the help shows their type names.)
func (s *Set) twin(name, env string) {
	if env == "" {
		return
	}
	f := s.fs.Lookup(name)
	f.Usage = fmt.Sprintf("%s (env %s)", f.Usage, env)
	s.env[name] = env
	s.order = append(s.order, name)
}

// Parse parses args, then gives each flag not set on the command line the value of its
// environment variable when that is set (even to ""), through the flag's own parser.
func (s *Set) Parse(args []string) error {
	if err := s.fs.Parse(args); err != nil {
		return err
	}
	onCommandLine := map[string]bool{}
	s.fs.Visit(func(f *flag.Flag) { onCommandLine[f.Name] = true })
	for _, name := range s.order {
		env := s.env[name]
		v, ok := s.lookup(env)
		if !ok || onCommandLine[name] {
			continue
		}
		if err := s.fs.Set(name, v); err != nil {
			return fmt.Errorf("environment variable %s=%q (flag --%s): %w%s", env, v, name, err, want(s.fs.Lookup(name)))
		}
	}
	return nil
}

// want says what a flag of the standard library's types takes: their errors say only "parse
// error" or "invalid syntax".
func want(f *flag.Flag) string {
	switch typ, _ := flag.UnquoteUsage(f); typ {
	case "":
		return ": want true or false"
	case "duration":
		return ": want a duration such as 10s or 1m30s"
	case "int":
		return ": want an integer"
	}
	return ""
}

type listValue struct {
	p     *[]string
	check func(string) error
}

func (v *listValue) Set(s string) error {
	var out []string
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		if v.check != nil {
			if err := v.check(item); err != nil {
				return fmt.Errorf("%q: %w", item, err)
			}
		}
		out = append(out, item)
	}
	*v.p = out
	return nil
}

func (v *listValue) String() string {
	if v == nil || v.p == nil {
		return ""
	}
	return strings.Join(*v.p, ",")
}

// CheckHelp returns an error naming every flag that the --help output (the flag set's Usage) does
// not list together with its environment variable; noTwin flags need no variable (--version).
func (s *Set) CheckHelp(noTwin ...string) error {
	var buf bytes.Buffer
	out := s.fs.Output()
	s.fs.SetOutput(&buf)
	s.fs.Usage()
	s.fs.SetOutput(out)
	return s.checkHelp(buf.String(), noTwin)
}

func (s *Set) checkHelp(help string, noTwin []string) error {
	var errs []error
	s.fs.VisitAll(func(f *flag.Flag) {
		env := s.env[f.Name]
		switch {
		case slices.Contains(noTwin, f.Name):
		case env == "":
			errs = append(errs, fmt.Errorf("flag --%s has no environment variable", f.Name))
		case !helpNames(help, f.Name, env):
			errs = append(errs, fmt.Errorf("--help does not list flag --%s with (env %s)", f.Name, env))
		}
	})
	return errors.Join(errs...)
}

// helpNames reports whether help has flag name's entry ("  -name type" and its usage lines)
// naming env.
func helpNames(help, name, env string) bool {
	for _, entry := range strings.Split("\n"+help, "\n  -")[1:] {
		if f := strings.Fields(entry); len(f) > 0 && f[0] == name {
			return strings.Contains(entry, "(env "+env+")")
		}
	}
	return false
}
