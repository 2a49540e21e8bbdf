package agent

import (
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// ruleToken is one word of a rule as iptables-restore reads it; a quoted word is never an option.
type ruleToken struct {
	s      string
	quoted bool
}

// splitRule splits a rule into words as iptables-restore does: on blanks, with "double quotes"
// grouping a word (\" inside them stands for a quote).
func splitRule(rule string) []ruleToken {
	toks := make([]ruleToken, 0, strings.Count(rule, " ")+1)
	for i := 0; i < len(rule); {
		switch {
		case rule[i] == ' ' || rule[i] == '\t':
			i++
		case rule[i] == '"':
			j, escaped := i+1, false
			for ; j < len(rule) && rule[j] != '"'; j++ {
				if rule[j] == '\\' && j+1 < len(rule) {
					j, escaped = j+1, true
				}
			}
			word := rule[i+1 : min(j, len(rule))]
			if escaped {
				word = unescapeQuoted(word)
			}
			toks = append(toks, ruleToken{word, true})
			i = j + 1
		default:
			j := i
			for j < len(rule) && rule[j] != ' ' && rule[j] != '\t' {
				j++
			}
			toks = append(toks, ruleToken{rule[i:j], false})
			i = j
		}
	}
	return toks
}

// unescapeQuoted drops the backslash of each \x inside a quoted word.
func unescapeQuoted(word string) string {
	var b strings.Builder
	for i := 0; i < len(word); i++ {
		if word[i] == '\\' && i+1 < len(word) {
			i++
		}
		b.WriteByte(word[i])
	}
	return b.String()
}

// canonicalRule is a rule in a form that every spelling of it shares, the one we render and the
// one iptables-save prints back: words unquoted; addresses with their prefix length; a
// probability as the kernel keeps it (a multiple of 2^-31, 11 decimals); and the rule cut into
// parts — its basic matches (-s, -d, -p, -i, …), each "-m" match, its target — with the options
// of each part sorted, the matches sorted, the target last. So iptables-save printing "-d" before
// "-p", "--ctorigdst 169.254.1.1" for "/32", 0.33333333349 for 0.33333333333 or a one-word
// comment without quotes is no drift, while any other change of a match, a value or the target is.
func canonicalRule(rule string) string {
	var parts, opts, opt []string
	head := "0" // rank: 0 basic matches, 1 a match, 2 the target
	endOpt := func() {
		if len(opt) > 0 {
			opts, opt = append(opts, strings.Join(opt, " ")), opt[:0]
		}
	}
	endPart := func() {
		endOpt()
		slices.Sort(opts)
		parts, opts = append(parts, head+" "+strings.Join(opts, " ")), opts[:0]
	}
	toks := splitRule(rule)
	for i := 0; i < len(toks); i++ {
		switch t := toks[i]; {
		case !t.quoted && partRank(t.s) != "" && i+1 < len(toks):
			endPart()
			head = partRank(t.s) + " " + toks[i+1].s
			i++
		case !t.quoted && (t.s == "!" || strings.HasPrefix(t.s, "-")) && !(len(opt) == 1 && opt[0] == "!"):
			endOpt()
			opt = append(opt, t.s)
		default:
			opt = append(opt, canonicalValue(opt, t))
		}
	}
	endPart()
	slices.Sort(parts)
	return strings.Join(parts, " | ")
}

// partRank ranks the words that start a part of a rule: a match (1) or the target (2).
func partRank(word string) string {
	switch word {
	case "-m", "--match":
		return "1"
	case "-j", "--jump", "-g", "--goto":
		return "2"
	}
	return ""
}

// canonicalValue is the value t of the option opt in canonicalRule's form.
func canonicalValue(opt []string, t ruleToken) string {
	v := t.s
	if len(opt) > 0 && opt[len(opt)-1] == "--probability" {
		if p, err := strconv.ParseFloat(v, 64); err == nil {
			// What xt_statistic keeps: lround(p × 2^31), printed as iptables-save does (%.11f).
			return strconv.FormatFloat(math.Round(p*(1<<31))/(1<<31), 'f', 11, 64)
		}
	}
	if !t.quoted && v != "" && (v[0] >= '0' && v[0] <= '9' || strings.Count(v, ":") >= 2) { // could be an address
		if a, err := netip.ParseAddr(v); err == nil {
			return netip.PrefixFrom(a, a.BitLen()).String()
		}
		if p, err := netip.ParsePrefix(v); err == nil {
			return p.Masked().String()
		}
	}
	if v == "" || strings.ContainsAny(v, " \t\"\\") {
		return strconv.Quote(v)
	}
	return v
}
