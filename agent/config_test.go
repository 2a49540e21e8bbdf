package agent

import (
	"flag"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/magic-ip/magic-ip/agent/nodestatus"
	"github.com/magic-ip/magic-ip/internal/flagenv"
)

// parseConfig binds a Config and parses args with env as the environment.
func parseConfig(env map[string]string, args ...string) (Config, error) {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fe := flagenv.New(fs, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	var c Config
	c.BindFlags(fe)
	return c, fe.Parse(args)
}

// TestConfigEnv: environment variables parse exactly as their flags do; a bad value is an error
// naming the variable, never a silent default.
func TestConfigEnv(t *testing.T) {
	tests := map[string]struct {
		env     map[string]string
		args    []string
		check   func(Config) bool
		wantErr string
	}{
		"defaults: endpoints on the node's loopback": {
			check: func(c Config) bool {
				return c.MetricsAddr == "127.0.0.1:10271" && c.HealthAddr == "127.0.0.1:10272" && c.ResyncPeriod == 10*time.Second &&
					c.MaxSyncBackoff == 10*time.Second && c.DetectLocalMode == "NodeAddresses" && c.Datapath == "auto" &&
					reflect.DeepEqual(c.AllowedAddressRanges, []string{"169.254.0.0/16", "fe80::/10", "fd00::/8"})
			},
		},
		"trailing comma in MAGIC_IP_EXTERNAL_INTERFACES": {
			env:   map[string]string{"MAGIC_IP_EXTERNAL_INTERFACES": "eth0,"},
			check: func(c Config) bool { return reflect.DeepEqual(c.ExternalInterfaces, []string{"eth0"}) },
		},
		"spaces and doubled commas": {
			env:   map[string]string{"MAGIC_IP_EXTERNAL_INTERFACES": " eth0,, ens5 "},
			check: func(c Config) bool { return reflect.DeepEqual(c.ExternalInterfaces, []string{"eth0", "ens5"}) },
		},
		"flag wins over env": {
			env:   map[string]string{"MAGIC_IP_EXTERNAL_INTERFACES": "eth0", "MAGIC_IP_RESYNC_PERIOD": "bogus"},
			args:  []string{"--external-interfaces", "eth1", "--resync-period", "3s"},
			check: func(c Config) bool { return c.ExternalInterfaces[0] == "eth1" && c.ResyncPeriod == 3*time.Second },
		},
		"env durations, bools, ints": {
			env: map[string]string{"MAGIC_IP_RESYNC_PERIOD": "30s", "MAGIC_IP_CLEANUP_ON_EXIT": "true", "MAGIC_IP_VERBOSITY": "4"},
			check: func(c Config) bool {
				return c.ResyncPeriod == 30*time.Second && c.CleanupOnExit && c.Verbosity == 4
			},
		},
		"datapath from env": {
			env:   map[string]string{"MAGIC_IP_DATAPATH": "nftables"},
			check: func(c Config) bool { return c.Datapath == DatapathNftables },
		},
		"bad interface name": {
			env:     map[string]string{"MAGIC_IP_EXTERNAL_INTERFACES": "eth0,a very long name"},
			wantErr: `environment variable MAGIC_IP_EXTERNAL_INTERFACES="eth0,a very long name" (flag --external-interfaces): "a very long name": interface name longer than 15 characters`,
		},
		"allowed ranges from env": {
			env: map[string]string{"MAGIC_IP_ALLOWED_ADDRESS_RANGES": "169.254.0.0/16, 10.200.0.0/16,"},
			check: func(c Config) bool {
				return reflect.DeepEqual(c.AllowedAddressRanges, []string{"169.254.0.0/16", "10.200.0.0/16"})
			},
		},
		"allowed range not a CIDR": {
			env:     map[string]string{"MAGIC_IP_ALLOWED_ADDRESS_RANGES": "169.254.0.0/16,169.254.169.254"},
			wantErr: `environment variable MAGIC_IP_ALLOWED_ADDRESS_RANGES="169.254.0.0/16,169.254.169.254" (flag --allowed-address-ranges): "169.254.169.254": netip.ParsePrefix("169.254.169.254"): no '/'`,
		},
		"resync without unit": {
			env:     map[string]string{"MAGIC_IP_RESYNC_PERIOD": "10"},
			wantErr: `environment variable MAGIC_IP_RESYNC_PERIOD="10" (flag --resync-period): parse error: want a duration`,
		},
		"cleanup not a bool": {
			env:     map[string]string{"MAGIC_IP_CLEANUP_ON_EXIT": "yes"},
			wantErr: `environment variable MAGIC_IP_CLEANUP_ON_EXIT="yes" (flag --cleanup-on-exit)`,
		},
		"verbosity not an int": {
			env:     map[string]string{"MAGIC_IP_VERBOSITY": "debug"},
			wantErr: `environment variable MAGIC_IP_VERBOSITY="debug" (flag --v)`,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c, err := parseConfig(tc.env, tc.args...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(c) {
				t.Errorf("unexpected config %+v", c)
			}
		})
	}
}

// TestConfigStartupTaint: --startup-taint (or MAGIC_IP_STARTUP_TAINT) is off by default, parsed as
// key[=value]:Effect, and a bad one fails validation naming the flag.
func TestConfigStartupTaint(t *testing.T) {
	for name, tc := range map[string]struct {
		env       map[string]string
		wantTaint string
		wantErr   string
	}{
		"off by default": {},
		"from the environment": {
			env: map[string]string{"MAGIC_IP_STARTUP_TAINT": "magic-ip.dev/agent-not-ready:NoSchedule"}, wantTaint: "magic-ip.dev/agent-not-ready:NoSchedule",
		},
		"no effect": {
			env: map[string]string{"MAGIC_IP_STARTUP_TAINT": "magic-ip.dev/agent-not-ready"}, wantErr: "--startup-taint: taint \"magic-ip.dev/agent-not-ready\": want key[=value]:Effect",
		},
	} {
		t.Run(name, func(t *testing.T) {
			c, err := parseConfig(tc.env, "--node-name", "n1")
			if err != nil {
				t.Fatal(err)
			}
			err = c.Validate()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Validate: %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			taint, terr := c.Taint()
			if err != nil || terr != nil {
				t.Fatalf("Validate: %v; Taint: %v", err, terr)
			}
			got := ""
			if taint != nil {
				got = nodestatus.TaintString(*taint)
			}
			if got != tc.wantTaint {
				t.Errorf("taint %q, want %q", got, tc.wantTaint)
			}
		})
	}
}
