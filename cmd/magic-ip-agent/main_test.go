package main

import (
	"testing"

	"github.com/magic-ip/magic-ip/agent"
)

// TestHelpListsEveryFlagWithEnv: --help lists every flag with its environment variable (all but
// --version have one).
func TestHelpListsEveryFlagWithEnv(t *testing.T) {
	var cfg agent.Config
	var showVersion bool
	noEnv := func(string) (string, bool) { return "", false }
	if err := flags(&cfg, &showVersion, noEnv).CheckHelp("version"); err != nil {
		t.Error(err)
	}
}
