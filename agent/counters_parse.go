package agent

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// notRedirected ends the comment of the verdict rule of each MagicIP port in MAGIC-IP-INPUT
// ("<magicip>:<port>: not redirected"): the rule that refuses or drops the new connections no
// local producer took. The counters find their rules by it.
const notRedirected = ": not redirected"

// counterKey names one series of magic_ip_agent_no_producer_connections_total.
type counterKey struct {
	MagicIP, Port, Protocol, Action string
}

// verdictRules reads the verdict rules of MAGIC-IP-INPUT from `iptables -v -S` output (each rule
// with "-c packets bytes") or from iptables-restore input (no counts: 0), summing the packets of
// rules with the same key. declared is true when the text declares the chain (":MAGIC-IP-INPUT"),
// which in restore input means the chain is emptied and refilled: its counters start again at 0.
func verdictRules(text []byte) (counts map[counterKey]uint64, declared bool) {
	counts = map[counterKey]uint64{}
	for rest := text; len(rest) > 0; {
		var line []byte
		line, rest, _ = bytes.Cut(rest, []byte("\n"))
		if decl, ok := bytes.CutPrefix(line, []byte(":"+chainInput)); ok && (len(decl) == 0 || decl[0] == ' ') {
			declared = true
		}
		rule, ok := bytes.CutPrefix(line, []byte("-A "+chainInput+" "))
		if !ok {
			continue
		}
		if k, n, ok := verdictRule(string(rule)); ok {
			counts[k] += n
		}
	}
	return counts, declared
}

// verdictRule reads one rule of MAGIC-IP-INPUT (after "-A MAGIC-IP-INPUT "); ok is false for the
// rules that are not a port's verdict (the undeclared-port ones).
func verdictRule(rule string) (k counterKey, packets uint64, ok bool) {
	toks := splitRule(rule)
	var comment, target string
	for i := 0; i+1 < len(toks); i++ {
		if toks[i].quoted {
			continue
		}
		switch next := toks[i+1].s; toks[i].s {
		case "-p", "--protocol":
			k.Protocol = strings.ToUpper(next)
		case "--comment":
			comment = next
		case "-j", "--jump":
			target = next
		case "-c", "--set-counters":
			packets, _ = strconv.ParseUint(next, 10, 64)
		}
	}
	name, isVerdict := strings.CutSuffix(comment, notRedirected)
	k.MagicIP, k.Port, ok = strings.Cut(name, ":")
	switch target {
	case "REJECT":
		k.Action = "refused"
	case "DROP":
		k.Action = "dropped"
	default:
		ok = false
	}
	return k, packets, ok && isVerdict
}

// readIptablesCounters reads the packet counters of the verdict rules of MAGIC-IP-INPUT with cmd,
// "iptables" or "ip6tables".
func readIptablesCounters(ctx context.Context, cmd string) (map[counterKey]uint64, error) {
	out, err := listVerdictRules(ctx, cmd)
	if err != nil {
		return nil, err
	}
	counts, _ := verdictRules(out)
	return counts, nil
}

// listVerdictRules lists MAGIC-IP-INPUT with its counters: one `iptables -v -S` (cmd: iptables or
// ip6tables) of that chain only. With nf_tables it fetches just that chain from the kernel (iptables-save would dump the
// whole ruleset: 14 ms against 230 ms beside 10,000 kube-proxy rules, medians measured here).
func listVerdictRules(ctx context.Context, cmd string) ([]byte, error) {
	var out, stderr bytes.Buffer
	c := exec.CommandContext(ctx, cmd, "-w", "5", "-t", "filter", "-v", "-S", chainInput)
	c.Stdout, c.Stderr = &out, &stderr
	if err := c.Run(); err != nil {
		return nil, fmt.Errorf("%s: list counters of filter/%s: %w: %s", cmd, chainInput, err, strings.TrimSpace(stderr.String()))
	}
	return out.Bytes(), nil
}
