package main

import (
	"context"
	"fmt"
	"time"

	"github.com/nvidia/nvsentinel/data-models/pkg/model"
	"github.com/nvidia/nvsentinel/data-models/pkg/protos"
	"github.com/nvidia/nvsentinel/store-client/pkg/client"
	"github.com/nvidia/nvsentinel/store-client/pkg/datastore"
	pgprovider "github.com/nvidia/nvsentinel/store-client/pkg/datastore/providers/postgresql"
)

const (
	// healthEventsTable is the snake_case name the watcher factory derives
	// from the HealthEvents collection name.
	healthEventsTable = "health_events"
	// notifyDelivery bounds a LISTEN/NOTIFY delivery, which takes milliseconds.
	notifyDelivery = 5 * time.Second
	// quietPeriod is how long to wait for an event that must not come.
	quietPeriod = 500 * time.Millisecond
	// pollDelivery covers the hybrid watcher's fallback poll, which first
	// runs 30 s after the watcher starts.
	pollDelivery = 45 * time.Second
)

// datastoreWatcher is a HYBRID watcher as the PostgreSQL watcher factory builds
// it, minus the resume-control step, which reads a ConfigMap through the
// in-cluster Kubernetes API that does not exist here.
type datastoreWatcher struct {
	clientName string
	watcher    datastore.ChangeStreamWatcher
	cancel     context.CancelFunc
}

func (h *harness) startDatastoreWatcher(ctx context.Context, clientName string) (*datastoreWatcher, error) {
	return h.startTableWatcher(ctx, clientName, healthEventsTable)
}

// startTableWatcher starts the HYBRID watcher of one table (the factory's
// snake_case table name) and returns once its LISTEN session is up.
func (h *harness) startTableWatcher(ctx context.Context, clientName, table string) (*datastoreWatcher, error) {
	before, err := h.listenerPIDs(ctx)
	if err != nil {
		return nil, err
	}

	raw := pgprovider.NewPostgreSQLChangeStreamWatcher(h.db, clientName, table, h.connString,
		pgprovider.ModeHybrid)
	watcher := pgprovider.NewPostgreSQLChangeStreamWatcherWithUnwrap(raw)

	watchCtx, cancel := context.WithCancel(ctx)
	watcher.Start(watchCtx)

	w := &datastoreWatcher{clientName: clientName, watcher: watcher, cancel: cancel}
	if err := h.awaitListener(ctx, before); err != nil {
		w.stop(ctx)
		return nil, err
	}

	return w, nil
}

// stop cancels the watcher's context before Close, because Close closes the
// event channel that a still-running fetch could otherwise send on.
func (w *datastoreWatcher) stop(ctx context.Context) {
	w.cancel()
	time.Sleep(100 * time.Millisecond)
	_ = w.watcher.Close(ctx)
}

// listenerPIDs lists this user's sessions that LISTEN on NVSentinel's channel.
func (h *harness) listenerPIDs(ctx context.Context) (map[int]bool, error) {
	rows, err := h.db.QueryContext(ctx, `
		SELECT pid FROM pg_stat_activity
		WHERE datname = current_database() AND usename = current_user
		  AND query ILIKE 'LISTEN %nvsentinel_changes%'`)
	if err != nil {
		return nil, fmt.Errorf("listing LISTEN sessions: %w", err)
	}
	defer rows.Close()

	pids := map[int]bool{}

	for rows.Next() {
		var pid int
		if err := rows.Scan(&pid); err != nil {
			return nil, fmt.Errorf("listing LISTEN sessions: %w", err)
		}

		pids[pid] = true
	}

	return pids, rows.Err()
}

// awaitListener waits until the watcher's LISTEN session is up, so a write made
// next is announced by NOTIFY rather than found by the 30 s fallback poll.
func (h *harness) awaitListener(ctx context.Context, before map[int]bool) error {
	deadline := time.Now().Add(notifyDelivery)

	for time.Now().Before(deadline) {
		now, err := h.listenerPIDs(ctx)
		if err != nil {
			return err
		}

		for pid := range now {
			if !before[pid] {
				return nil
			}
		}

		time.Sleep(20 * time.Millisecond)
	}

	return fmt.Errorf("no LISTEN nvsentinel_changes session appeared within %v: HYBRID mode did not start listening",
		notifyDelivery)
}

func recordID(event datastore.EventWithToken) string {
	doc, _ := event.Event["fullDocument"].(map[string]any)
	return fmt.Sprint(doc["id"])
}

func operationType(event datastore.EventWithToken) string {
	return fmt.Sprint(event.Event["operationType"])
}

// awaitRecord returns the first event of the record, and every event that
// arrived before it, so callers can check nothing came that should not have.
func awaitRecord(ctx context.Context, events <-chan datastore.EventWithToken, id, op string,
	within time.Duration) (datastore.EventWithToken, []datastore.EventWithToken, error) {
	timer := time.NewTimer(within)
	defer timer.Stop()

	var before []datastore.EventWithToken

	for {
		select {
		case event, ok := <-events:
			if !ok {
				return datastore.EventWithToken{}, before, fmt.Errorf("the event channel closed before the %s of %s", op, id)
			}

			if recordID(event) == id && operationType(event) == op {
				return event, before, nil
			}

			before = append(before, event)
		case <-timer.C:
			return datastore.EventWithToken{}, before, fmt.Errorf("no %s event for %s within %v (%d other events)",
				op, id, within, len(before))
		case <-ctx.Done():
			return datastore.EventWithToken{}, before, ctx.Err()
		}
	}
}

func drain(events <-chan datastore.EventWithToken, within time.Duration) []datastore.EventWithToken {
	timer := time.NewTimer(within)
	defer timer.Stop()

	var got []datastore.EventWithToken

	for {
		select {
		case event, ok := <-events:
			if !ok {
				return got
			}

			got = append(got, event)
		case <-timer.C:
			return got
		}
	}
}

func mentions(events []datastore.EventWithToken, id string) bool {
	for _, event := range events {
		if recordID(event) == id {
			return true
		}
	}

	return false
}

// storedToken is the eventID in the client's resume_tokens row.
func (h *harness) storedToken(ctx context.Context, clientName string) (string, error) {
	var eventID string

	err := h.db.QueryRowContext(ctx,
		`SELECT resume_token->>'eventID' FROM resume_tokens WHERE client_name = $1`, clientName).Scan(&eventID)
	if err != nil {
		return "", fmt.Errorf("reading the resume token of %s: %w", clientName, err)
	}

	return eventID, nil
}

func checkInsertEvent(c *checks, event datastore.EventWithToken, id, node string) {
	doc, _ := event.Event["fullDocument"].(map[string]any)
	healthEvent, _ := doc["healthevent"].(map[string]any)

	c.equal("insert operationType", operationType(event), "insert")
	c.equal("insert fullDocument.id", doc["id"], id)
	c.equal("insert fullDocument.healthevent.nodeName", healthEvent["nodeName"], node)
}

func checkQuarantineUpdate(c *checks, event datastore.EventWithToken) {
	doc, _ := event.Event["fullDocument"].(map[string]any)
	status, _ := doc["healtheventstatus"].(map[string]any)
	description, _ := event.Event["updateDescription"].(map[string]any)
	updated, _ := description["updatedFields"].(map[string]any)

	c.equal("update operationType", operationType(event), "update")
	c.equal("update fullDocument.healtheventstatus.nodequarantined", status["nodequarantined"], model.Quarantined)
	c.equal("update updatedFields[healtheventstatus.nodequarantined]", updated[nodeQuarantinedPath], model.Quarantined)
}

// caseWatchResume: insert and update seen live, MarkProcessed, restart from
// the saved token, and only the next write arrives.
func caseWatchResume(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	clientName, node := h.name("watcher"), h.name("node")

	first, err := h.startDatastoreWatcher(ctx, clientName)
	if err != nil {
		return "", err
	}

	var c checks

	idA, token, err := h.watchInsertAndUpdate(ctx, &c, first, node)
	first.stop(ctx)

	if err != nil {
		return "", err
	}

	second, err := h.startDatastoreWatcher(ctx, clientName)
	if err != nil {
		return "", err
	}
	defer second.stop(ctx)

	idB, err := h.insertOnNode(ctx, node)
	if err != nil {
		return "", err
	}

	eventB, before, err := awaitRecord(ctx, second.watcher.Events(), idB, "insert", notifyDelivery)
	if err != nil {
		return "", fmt.Errorf("after the restart: %w", err)
	}

	c.that(!mentions(append(before, drain(second.watcher.Events(), quietPeriod)...), idA),
		"an event of %s, processed before the restart, was delivered again", idA)
	checkInsertEvent(&c, eventB, idB, node)

	if err := second.watcher.MarkProcessed(ctx, eventB.ResumeToken); err != nil {
		return "", fmt.Errorf("MarkProcessed after the restart: %w", err)
	}

	c.equal("resume_tokens eventID after the restart", c.read(h.storedToken(ctx, clientName)), string(eventB.ResumeToken))

	if err := c.err(); err != nil {
		return "", err
	}

	return fmt.Sprintf("insert and update of %s arrived by NOTIFY; token %s saved; after the restart only the "+
		"next insert arrived", idA, token), nil
}

// watchInsertAndUpdate writes an event and quarantines it, checks both change
// events, marks the update processed and returns the record and the token.
func (h *harness) watchInsertAndUpdate(ctx context.Context, c *checks, w *datastoreWatcher,
	node string) (string, string, error) {
	id, err := h.insertOnNode(ctx, node)
	if err != nil {
		return "", "", err
	}

	inserted, _, err := awaitRecord(ctx, w.watcher.Events(), id, "insert", notifyDelivery)
	if err != nil {
		return "", "", err
	}

	checkInsertEvent(c, inserted, id, node)

	if err := client.UpdateHealthEventNodeQuarantineStatus(ctx, h.healthClient, id, string(model.Quarantined),
		randomHex(8)); err != nil {
		return "", "", fmt.Errorf("UpdateHealthEventNodeQuarantineStatus: %w", err)
	}

	updated, _, err := awaitRecord(ctx, w.watcher.Events(), id, "update", notifyDelivery)
	if err != nil {
		return "", "", err
	}

	checkQuarantineUpdate(c, updated)

	if err := w.watcher.MarkProcessed(ctx, updated.ResumeToken); err != nil {
		return "", "", fmt.Errorf("MarkProcessed: %w", err)
	}

	token := string(updated.ResumeToken)
	c.equal("resume_tokens eventID", c.read(h.storedToken(ctx, w.clientName)), token)

	return id, token, nil
}

// processOne runs a watcher until one write of node is processed, then stops it,
// leaving a saved token behind as a service does before it goes down.
func (h *harness) processOne(ctx context.Context, clientName, node string) (string, error) {
	w, err := h.startDatastoreWatcher(ctx, clientName)
	if err != nil {
		return "", err
	}
	defer w.stop(ctx)

	id, err := h.insertOnNode(ctx, node)
	if err != nil {
		return "", err
	}

	event, _, err := awaitRecord(ctx, w.watcher.Events(), id, "insert", notifyDelivery)
	if err != nil {
		return "", err
	}

	if err := w.watcher.MarkProcessed(ctx, event.ResumeToken); err != nil {
		return "", fmt.Errorf("MarkProcessed: %w", err)
	}

	return id, nil
}

// caseWatchBacklogThenLive restarts a watcher after a write made while it was
// down, then writes again: both must arrive, the backlog first.
func caseWatchBacklogThenLive(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	clientName, node := h.name("watcher"), h.name("node")

	if _, err := h.processOne(ctx, clientName, node); err != nil {
		return "", err
	}

	backlog, err := h.insertOnNode(ctx, node)
	if err != nil {
		return "", err
	}

	w, err := h.startDatastoreWatcher(ctx, clientName)
	if err != nil {
		return "", err
	}
	defer w.stop(ctx)

	live, err := h.insertOnNode(ctx, node)
	if err != nil {
		return "", err
	}

	_, before, err := awaitRecord(ctx, w.watcher.Events(), live, "insert", notifyDelivery)
	if err != nil {
		return "", fmt.Errorf("the live write: %w", err)
	}

	got := append(before, drain(w.watcher.Events(), 2*time.Second)...)
	if !mentions(got, backlog) {
		return "", fmt.Errorf("the event %s written while the watcher was stopped was never delivered: the NOTIFY of "+
			"the live write %s moved the resume position past it", backlog, live)
	}

	if !mentions(before, backlog) {
		return "", fmt.Errorf("the backlog event %s arrived after the live write %s", backlog, live)
	}

	return fmt.Sprintf("backlog %s then live %s arrived in order after the restart", backlog, live), nil
}

// caseWatchBacklogPoll restarts a watcher after a write made while it was down
// and writes nothing more: only the fallback poll can find that write.
func caseWatchBacklogPoll(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	clientName, node := h.name("watcher"), h.name("node")

	processed, err := h.processOne(ctx, clientName, node)
	if err != nil {
		return "", err
	}

	backlog, err := h.insertOnNode(ctx, node)
	if err != nil {
		return "", err
	}

	start := time.Now()

	w, err := h.startDatastoreWatcher(ctx, clientName)
	if err != nil {
		return "", err
	}
	defer w.stop(ctx)

	event, before, err := awaitRecord(ctx, w.watcher.Events(), backlog, "insert", pollDelivery)
	if err != nil {
		return "", err
	}

	var c checks

	c.that(!mentions(before, processed), "the processed event %s was delivered again", processed)
	checkInsertEvent(&c, event, backlog, node)

	if err := c.err(); err != nil {
		return "", err
	}

	return fmt.Sprintf("the fallback poll delivered the backlog event %.1fs after the restart, without redelivering "+
		"the processed one", time.Since(start).Seconds()), nil
}

// clientWatcher is the watcher the client factory gives fault-quarantine:
// DatabaseClient.NewChangeStreamWatcher with the provider's pipeline, wrapped
// with the resume-control decision (none here: no Kubernetes API).
func (h *harness) clientWatcher(ctx context.Context, clientName string, pipeline datastore.Pipeline) (
	client.ChangeStreamWatcher, context.CancelFunc, error) {
	before, err := h.listenerPIDs(ctx)
	if err != nil {
		return nil, nil, err
	}

	raw, err := h.healthClient.NewChangeStreamWatcher(ctx, client.TokenConfig{ClientName: clientName}, pipeline)
	if err != nil {
		return nil, nil, fmt.Errorf("NewChangeStreamWatcher: %w", err)
	}

	watcher := client.NewChangeStreamWatcherWithResumeControl(raw, client.ResumeControlDecision{})

	watchCtx, cancel := context.WithCancel(ctx)
	watcher.Start(watchCtx)

	stop := func() {
		cancel()
		time.Sleep(100 * time.Millisecond)
		_ = watcher.Close(ctx)
	}

	if err := h.awaitListener(ctx, before); err != nil {
		stop()
		return nil, nil, err
	}

	return watcher, stop, nil
}

func awaitClientEvent(ctx context.Context, events <-chan client.Event, within time.Duration) (client.Event, error) {
	timer := time.NewTimer(within)
	defer timer.Stop()

	select {
	case event, ok := <-events:
		if !ok {
			return nil, fmt.Errorf("the event channel closed")
		}

		return event, nil
	case <-timer.C:
		return nil, fmt.Errorf("no event within %v", within)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func caseWatchFaultQuarantinePipeline(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	pipeline := client.GetPipelineBuilder().BuildProcessableHealthEventInsertsPipeline()

	watcher, stop, err := h.clientWatcher(ctx, h.name("fault-quarantine"), pipeline)
	if err != nil {
		return "", err
	}
	defer stop()

	node := h.name("node")
	storeOnly := h.healthEvent(node)
	storeOnly.ProcessingStrategy = protos.ProcessingStrategy_STORE_ONLY

	if _, err := h.insert(ctx, storeOnly); err != nil {
		return "", err
	}

	processable, err := h.insertQuarantined(ctx, node, model.Quarantined)
	if err != nil {
		return "", err
	}

	events := watcher.Events()

	event, err := awaitClientEvent(ctx, events, notifyDelivery)
	if err != nil {
		return "", err
	}

	var c checks

	h.checkClientEvent(&c, event, processable, node)

	if extra, err := awaitClientEvent(ctx, events, quietPeriod); err == nil {
		id, _ := extra.GetRecordUUID()
		c.that(false, "an event of %s arrived after the processable insert; the pipeline takes inserts only", id)
	}

	if err := watcher.MarkProcessed(ctx, event.GetResumeToken()); err != nil {
		return "", fmt.Errorf("MarkProcessed: %w", err)
	}

	if err := c.err(); err != nil {
		return "", err
	}

	return fmt.Sprintf("only the EXECUTE_REMEDIATION insert %s arrived; the STORE_ONLY insert and the "+
		"update were filtered out", processable), nil
}

func (h *harness) checkClientEvent(c *checks, event client.Event, id, node string) {
	gotID, err := event.GetRecordUUID()
	c.that(err == nil, "GetRecordUUID: %v", err)
	c.equal("GetRecordUUID", gotID, id)

	var doc model.HealthEventWithStatus
	if err := event.UnmarshalDocument(&doc); err != nil {
		c.that(false, "UnmarshalDocument: %v", err)
		return
	}

	c.that(doc.HealthEvent != nil && doc.HealthEvent.GetNodeName() == node,
		"UnmarshalDocument: healthevent.nodeName is not %s", node)
	c.that(doc.HealthEvent != nil && doc.HealthEvent.GetProcessingStrategy() ==
		protos.ProcessingStrategy_EXECUTE_REMEDIATION, "UnmarshalDocument: processingStrategy is not EXECUTE_REMEDIATION")
}

func caseWatchNodeDrainerPipeline(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	pipeline := client.GetPipelineBuilder().BuildNodeQuarantineStatusPipeline()

	watcher, stop, err := h.clientWatcher(ctx, h.name("node-drainer"), pipeline)
	if err != nil {
		return "", err
	}
	defer stop()

	node := h.name("node")

	id, err := h.insertQuarantined(ctx, node, model.Quarantined)
	if err != nil {
		return "", err
	}

	event, err := awaitClientEvent(ctx, watcher.Events(), notifyDelivery)
	if err != nil {
		return "", err
	}

	var c checks

	h.checkClientEvent(&c, event, id, node)

	var doc model.HealthEventWithStatus
	if err := event.UnmarshalDocument(&doc); err == nil {
		c.that(doc.HealthEventStatus != nil && doc.HealthEventStatus.GetNodeQuarantined() == string(model.Quarantined),
			"UnmarshalDocument: healtheventstatus.nodequarantined is not Quarantined")
	}

	if err := watcher.MarkProcessed(ctx, event.GetResumeToken()); err != nil {
		return "", fmt.Errorf("MarkProcessed: %w", err)
	}

	if err := c.err(); err != nil {
		return "", err
	}

	return fmt.Sprintf("the quarantine update of %s arrived (the plain insert before it was filtered out)", id), nil
}
