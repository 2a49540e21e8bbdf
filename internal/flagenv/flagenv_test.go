package flagenv

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"
)

type values struct {
	Name    string
	On      bool
	N       int
	Every   time.Duration
	Ifaces  []string
	Checked []string
}

func bind(env map[string]string) (*Set, *values) {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	s := New(fs, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	v := &values{}
	s.String(&v.Name, "name", "T_NAME", "def", "a name")
	s.Bool(&v.On, "on", "T_ON", false, "a switch")
	s.Int(&v.N, "n", "T_N", 3, "a number")
	s.Duration(&v.Every, "every", "T_EVERY", 10*time.Second, "a period")
	s.List(&v.Ifaces, "ifaces", "T_IFACES", nil, nil, "interfaces")
	s.List(&v.Checked, "checked", "T_CHECKED", []string{"a"}, func(s string) error {
		if strings.Contains(s, " ") {
			return errors.New("contains a space")
		}
		return nil
	}, "checked items")
	return s, v
}

func TestParse(t *testing.T) {
	defaults := values{Name: "def", N: 3, Every: 10 * time.Second, Checked: []string{"a"}}
	with := func(f func(*values)) values { v := defaults; f(&v); return v }
	tests := map[string]struct {
		env     map[string]string
		args    []string
		want    values
		wantErr string // substring; "" means no error
	}{
		"defaults": {want: defaults},
		"env sets every kind": {
			env: map[string]string{"T_NAME": "x", "T_ON": "true", "T_N": "7", "T_EVERY": "2s", "T_IFACES": "eth0,eth1"},
			want: with(func(v *values) {
				v.Name, v.On, v.N, v.Every, v.Ifaces = "x", true, 7, 2*time.Second, []string{"eth0", "eth1"}
			}),
		},
		"env trailing comma dropped": {
			env:  map[string]string{"T_IFACES": "eth0,"},
			want: with(func(v *values) { v.Ifaces = []string{"eth0"} }),
		},
		"flag trailing comma dropped too": {
			args: []string{"--ifaces", "eth0,"},
			want: with(func(v *values) { v.Ifaces = []string{"eth0"} }),
		},
		"spaces and empty items dropped": {
			env:  map[string]string{"T_IFACES": " eth0 , ,eth1,,"},
			want: with(func(v *values) { v.Ifaces = []string{"eth0", "eth1"} }),
		},
		"empty list env empties the default": {
			env:  map[string]string{"T_CHECKED": ""},
			want: with(func(v *values) { v.Checked = nil }),
		},
		"empty string env is an empty string": {
			env:  map[string]string{"T_NAME": ""},
			want: with(func(v *values) { v.Name = "" }),
		},
		"command line wins over env": {
			env:  map[string]string{"T_NAME": "env", "T_N": "7", "T_ON": "true", "T_IFACES": "eth9"},
			args: []string{"--name=flag", "--n", "8", "--on=false", "--ifaces", "eth0"},
			want: with(func(v *values) { v.Name, v.N, v.Ifaces = "flag", 8, []string{"eth0"} }),
		},
		"command line wins even when env is malformed": {
			env:  map[string]string{"T_N": "seven"},
			args: []string{"--n", "8"},
			want: with(func(v *values) { v.N = 8 }),
		},
		"bad int env":      {env: map[string]string{"T_N": "seven"}, wantErr: `environment variable T_N="seven" (flag --n)`},
		"empty int env":    {env: map[string]string{"T_N": ""}, wantErr: `environment variable T_N="" (flag --n)`},
		"bad bool env":     {env: map[string]string{"T_ON": "yes"}, wantErr: `environment variable T_ON="yes" (flag --on)`},
		"bad duration env": {env: map[string]string{"T_EVERY": "10"}, wantErr: `environment variable T_EVERY="10" (flag --every): parse error: want a duration such as 10s or 1m30s`},
		"bad list item env": {
			env: map[string]string{"T_CHECKED": "ok,not ok"}, wantErr: `environment variable T_CHECKED="ok,not ok" (flag --checked): "not ok": contains a space`,
		},
		"bad list item flag": {args: []string{"--checked", "not ok"}, wantErr: `"not ok": contains a space`},
		"bad int flag":       {args: []string{"--n", "x"}, wantErr: `invalid value "x" for flag -n`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s, got := bind(tc.env)
			err := s.Parse(tc.args)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse: got error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(*got, tc.want) {
				t.Errorf("values:\n got %+v\nwant %+v", *got, tc.want)
			}
		})
	}
}

// TestHelpNamesEnv: every bound flag's help names its variable, and Env reports it.
func TestHelpNamesEnv(t *testing.T) {
	s, _ := bind(nil)
	var buf bytes.Buffer
	s.FlagSet().SetOutput(&buf)
	s.FlagSet().PrintDefaults()
	for flagName, env := range map[string]string{"name": "T_NAME", "on": "T_ON", "n": "T_N", "every": "T_EVERY", "ifaces": "T_IFACES", "checked": "T_CHECKED"} {
		if got := s.Env(flagName); got != env {
			t.Errorf("Env(%q) = %q, want %q", flagName, got, env)
		}
		if !strings.Contains(buf.String(), "(env "+env+")") {
			t.Errorf("help does not name %s:\n%s", env, buf.String())
		}
	}
}

// TestCheckHelp: CheckHelp finds a flag without a variable and one whose help entry does not name it.
func TestCheckHelp(t *testing.T) {
	s, _ := bind(nil)
	s.FlagSet().Bool("version", false, "print the version")
	s.FlagSet().Bool("x", false, "no twin")
	err := s.CheckHelp("version")
	if err == nil || err.Error() != "flag --x has no environment variable" {
		t.Errorf("CheckHelp: got %v, want only --x reported", err)
	}
	var buf bytes.Buffer
	s.FlagSet().SetOutput(&buf)
	s.FlagSet().PrintDefaults()
	err = s.checkHelp(strings.Replace(buf.String(), "(env T_N)", "", 1), []string{"version", "x"})
	if err == nil || err.Error() != "--help does not list flag --n with (env T_N)" {
		t.Errorf("CheckHelp without T_N: got %v", err)
	}
}
