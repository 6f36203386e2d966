// Command nvsentinel-client-check runs NVSentinel's own Go store-client
// operations (store-client, data-models, commons) against a PostgreSQL
// database, one named case per operation a service performs, and reports each
// case as a JSON line. The pytest module tests/datastore/test_nvsentinel_client.py
// runs it and judges the results; this program only reports.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"
)

const usageText = `Usage:
  nvsentinel-client-check list
  nvsentinel-client-check run [--cases NAME,NAME...] [--log-level LEVEL]
  nvsentinel-client-check watch --table TABLE [--client-name NAME] [--seconds N] [--log-level LEVEL]

list prints the case names, one a line, in the order run runs them.
run runs the cases against the database named by the DATASTORE_* variables
(read by NVSentinel's store-client config loader) and prints one JSON object a
line: {"case": NAME, "ok": BOOL, "detail": TEXT, "seconds": FLOAT}. It exits 0
whatever the cases report; 2 means a usage error.

  --cases      comma-separated subset of the cases (default: all)
  --log-level  level of NVSentinel's own slog output on stderr: debug, info,
               warn (default) or error

watch runs NVSentinel's HYBRID change stream watcher (LISTEN nvsentinel_changes
plus its fallback poll) on one table, as a service runs it, against the same
DATASTORE_* database. It prints {"ready": true, ...} once the watcher's LISTEN
session is up, then for each delivered event, after MarkProcessed with the
event's resume token returned, {"change_id": ID, "record_id": UUID,
"operation": OP}; it stops when stdin closes (so keep stdin open), at SIGTERM
or SIGINT, or after --seconds, and prints {"stopped": true, "delivered": N,
"reason": WHY} (with "error" and exit 1 if the watcher failed).

  --table        health_events or maintenance_events
  --client-name  the watcher's resume token name (default: a new name, so it
                 starts from now)
  --seconds      stop after this many seconds (default 0: no limit)
`

// errUsage marks errors that are the caller's mistake, which exit 2.
var errUsage = errors.New("usage error")

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	err := dispatch(args, stdout, stderr)
	if err == nil {
		return 0
	}

	fmt.Fprintf(stderr, "nvsentinel-client-check: %v\n", err)

	if errors.Is(err, errUsage) {
		fmt.Fprint(stderr, usageText)
		return 2
	}

	return 1
}

func dispatch(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: no command", errUsage)
	}

	switch args[0] {
	case "list":
		if len(args) > 1 {
			return fmt.Errorf("%w: list takes no arguments", errUsage)
		}

		for _, c := range allCases() {
			fmt.Fprintln(stdout, c.name)
		}

		return nil
	case "run":
		return runCommand(args[1:], stdout, stderr)
	case "watch":
		return watchCommand(args[1:], os.Stdin, stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usageText)
		return nil
	default:
		return fmt.Errorf("%w: unknown command %q", errUsage, args[0])
	}
}

func runCommand(args []string, stdout, stderr io.Writer) error {
	flags := flag.NewFlagSet("run", flag.ContinueOnError)
	flags.SetOutput(io.Discard)
	casesFlag := flags.String("cases", "", "")
	logLevel := flags.String("log-level", "warn", "")

	if err := flags.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}

	if flags.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, flags.Arg(0))
	}

	level, err := parseLevel(*logLevel)
	if err != nil {
		return err
	}

	selected, err := selectCases(*casesFlag)
	if err != nil {
		return err
	}

	slog.SetDefault(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})))

	h := newHarness()
	defer h.close()

	out := json.NewEncoder(stdout)
	for _, c := range selected {
		if err := out.Encode(runCase(h, c)); err != nil {
			return fmt.Errorf("writing result: %w", err)
		}
	}

	return nil
}

func parseLevel(name string) (slog.Level, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(name)); err != nil {
		return 0, fmt.Errorf("%w: --log-level %q: %v", errUsage, name, err)
	}

	return level, nil
}

// selectCases keeps the registry order whatever order --cases names them in,
// because later cases may rely on what earlier ones set up (the connection).
func selectCases(spec string) ([]checkCase, error) {
	all := allCases()
	if strings.TrimSpace(spec) == "" {
		return all, nil
	}

	wanted := map[string]bool{}

	for _, name := range strings.Split(spec, ",") {
		if name = strings.TrimSpace(name); name != "" {
			wanted[name] = true
		}
	}

	var selected []checkCase

	for _, c := range all {
		if wanted[c.name] {
			selected = append(selected, c)
			delete(wanted, c.name)
		}
	}

	if len(wanted) > 0 {
		unknown := make([]string, 0, len(wanted))
		for name := range wanted {
			unknown = append(unknown, name)
		}

		return nil, fmt.Errorf("%w: unknown case(s): %s (see 'list')", errUsage, strings.Join(unknown, ", "))
	}

	return selected, nil
}

type result struct {
	Case    string  `json:"case"`
	OK      bool    `json:"ok"`
	Detail  string  `json:"detail"`
	Seconds float64 `json:"seconds"`
}

// runCase gives each case its own deadline and turns a panic inside NVSentinel's
// code into a failed case, so one broken operation cannot hide the others.
func runCase(h *harness, c checkCase) (res result) {
	start := time.Now()
	res.Case = c.name

	defer func() {
		if p := recover(); p != nil {
			res.OK = false
			res.Detail = fmt.Sprintf("panic: %v", p)
		}

		res.Seconds = roundSeconds(time.Since(start))
	}()

	ctx, cancel := context.WithTimeout(context.Background(), c.timeout())
	defer cancel()

	detail, err := c.run(ctx, h)
	if err != nil {
		res.Detail = err.Error()
		return res
	}

	res.OK = true
	res.Detail = detail

	return res
}

func roundSeconds(d time.Duration) float64 {
	return float64(d.Milliseconds()) / 1000
}
