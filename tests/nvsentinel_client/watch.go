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
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/nvidia/nvsentinel/store-client/pkg/datastore"
	"golang.org/x/sys/unix"
)

// watchTables are the tables NVSentinel's change log trigger covers.
var watchTables = map[string]bool{"health_events": true, "maintenance_events": true}

// watchStartLimit bounds the provider start plus the LISTEN session coming up.
const watchStartLimit = 30 * time.Second

// watchReady is printed once the watcher's LISTEN session is up.
type watchReady struct {
	Ready      bool   `json:"ready"`
	ClientName string `json:"client_name"`
	Table      string `json:"table"`
}

// watchEvent is one delivered event, printed after MarkProcessed returned.
// ReceivedNS is CLOCK_MONOTONIC when the event came off the watcher's channel
// (before MarkProcessed), in nanoseconds: the clock of Python's
// time.monotonic_ns, so a benchmark on the same machine can subtract its own
// commit times from it.
type watchEvent struct {
	ChangeID   int64  `json:"change_id"`
	RecordID   string `json:"record_id"`
	Operation  string `json:"operation"`
	ReceivedNS int64  `json:"received_ns"`
}

// watchStopped is the last line: why the watcher stopped and how many events
// it delivered; Error is set when it stopped because something failed.
type watchStopped struct {
	Stopped   bool   `json:"stopped"`
	Delivered int    `json:"delivered"`
	Reason    string `json:"reason"`
	Error     string `json:"error,omitempty"`
}

// watchCommand runs one HYBRID watcher as a service runs it: start, then for
// each event its processing (here: print it) and MarkProcessed with the
// event's resume token, until stdin closes, a signal comes or --seconds pass.
func watchCommand(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	flags := flag.NewFlagSet("watch", flag.ContinueOnError)
	flags.SetOutput(io.Discard)
	table := flags.String("table", "", "")
	clientName := flags.String("client-name", "", "")
	seconds := flags.Float64("seconds", 0, "")
	logLevel := flags.String("log-level", "warn", "")

	if err := flags.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}

	if flags.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, flags.Arg(0))
	}

	if !watchTables[*table] {
		return fmt.Errorf("%w: --table must be health_events or maintenance_events, not %q", errUsage, *table)
	}

	if *seconds < 0 {
		return fmt.Errorf("%w: --seconds must not be negative", errUsage)
	}

	level, err := parseLevel(*logLevel)
	if err != nil {
		return err
	}

	slog.SetDefault(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})))

	h := newHarness()
	defer h.close()

	name := *clientName
	if name == "" {
		name = h.name("watch")
	}

	ctx, reason := watchContext(stdin, time.Duration(*seconds*float64(time.Second)))
	defer reason.cancel(nil)

	w, err := h.startWatch(ctx, name, *table)
	if err != nil {
		if why := reason.why(); why != "" {
			return fmt.Errorf("stopped (%s) before the watcher was listening: %w", why, err)
		}

		return err
	}

	out := json.NewEncoder(stdout)
	if err := out.Encode(watchReady{Ready: true, ClientName: name, Table: *table}); err != nil {
		w.stop(context.Background())
		return fmt.Errorf("writing ready: %w", err)
	}

	delivered, runErr := processEvents(ctx, w, out)
	w.stop(context.Background())

	stopped := watchStopped{Stopped: true, Delivered: delivered, Reason: reason.why()}
	if runErr != nil {
		stopped.Reason = "failed"
		stopped.Error = runErr.Error()
	}

	if err := out.Encode(stopped); err != nil {
		return fmt.Errorf("writing stopped: %w", err)
	}

	return runErr
}

func (h *harness) startWatch(ctx context.Context, clientName, table string) (*datastoreWatcher, error) {
	startCtx, cancel := context.WithTimeout(ctx, watchStartLimit)
	defer cancel()

	if err := h.connect(startCtx); err != nil {
		return nil, err
	}

	// The watcher runs on ctx, not startCtx: only the start is bounded.
	w, err := h.startTableWatcher(ctx, clientName, table)
	if err != nil {
		return nil, fmt.Errorf("starting the HYBRID watcher: %w", err)
	}

	return w, nil
}

// processEvents is the services' event loop (client.DefaultEventProcessor):
// take an event, process it, MarkProcessed its token, and stop at the first
// MarkProcessed failure, which a service cannot checkpoint past either.
func processEvents(ctx context.Context, w *datastoreWatcher, out *json.Encoder) (int, error) {
	delivered := 0

	for {
		select {
		case <-ctx.Done():
			return delivered, nil
		case event, ok := <-w.watcher.Events():
			if !ok {
				return delivered, errors.New("the watcher closed its event channel")
			}

			received := monotonicNS()

			line, err := describeEvent(event)
			if err != nil {
				return delivered, err
			}

			line.ReceivedNS = received

			if err := w.watcher.MarkProcessed(ctx, event.ResumeToken); err != nil {
				if ctx.Err() != nil {
					return delivered, nil
				}

				return delivered, fmt.Errorf("MarkProcessed(%s): %w", event.ResumeToken, err)
			}

			delivered++

			if err := out.Encode(line); err != nil {
				return delivered, fmt.Errorf("writing an event: %w", err)
			}
		}
	}
}

// monotonicNS reads CLOCK_MONOTONIC (0 if it cannot be read, which Linux never refuses).
func monotonicNS() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}

	return ts.Nano()
}

func describeEvent(event datastore.EventWithToken) (watchEvent, error) {
	changeID, err := strconv.ParseInt(string(event.ResumeToken), 10, 64)
	if err != nil {
		return watchEvent{}, fmt.Errorf("resume token %q is not a changelog id: %w", event.ResumeToken, err)
	}

	return watchEvent{ChangeID: changeID, RecordID: eventRecordID(event), Operation: operationType(event)}, nil
}

// eventRecordID is the changed row's id: fullDocument.id, or for a delete
// fullDocumentBeforeChange.id.
func eventRecordID(event datastore.EventWithToken) string {
	for _, key := range []string{"fullDocument", "fullDocumentBeforeChange"} {
		if doc, ok := event.Event[key].(map[string]any); ok {
			if id, ok := doc["id"]; ok {
				return fmt.Sprint(id)
			}
		}
	}

	return ""
}

// stopReason records the first of the ways a watch ends.
type stopReason struct {
	cancel context.CancelCauseFunc
	ctx    context.Context
}

var (
	errStdinClosed = errors.New("stdin closed")
	errSignal      = errors.New("signal")
	errTimeLimit   = errors.New("time limit")
)

func (r stopReason) why() string {
	if cause := context.Cause(r.ctx); cause != nil {
		return cause.Error()
	}

	return ""
}

// watchContext ends when stdin reaches EOF, at SIGTERM or SIGINT, or after limit
// (0: no limit).
func watchContext(stdin io.Reader, limit time.Duration) (context.Context, stopReason) {
	ctx, cancel := context.WithCancelCause(context.Background())

	go func() {
		_, _ = io.Copy(io.Discard, stdin)
		cancel(errStdinClosed)
	}()

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, os.Interrupt)

	go func() {
		select {
		case <-signals:
			cancel(errSignal)
		case <-ctx.Done():
		}

		signal.Stop(signals)
	}()

	if limit > 0 {
		timer := time.AfterFunc(limit, func() { cancel(errTimeLimit) })
		context.AfterFunc(ctx, func() { timer.Stop() })
	}

	return ctx, stopReason{cancel: cancel, ctx: ctx}
}
