package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/lib/pq"
	"github.com/lib/pq/pqerror"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nvidia/nvsentinel/commons/pkg/tracing"
	"github.com/nvidia/nvsentinel/data-models/pkg/model"
	"github.com/nvidia/nvsentinel/store-client/pkg/client"
	"github.com/nvidia/nvsentinel/store-client/pkg/datastore"
	pgprovider "github.com/nvidia/nvsentinel/store-client/pkg/datastore/providers/postgresql"
)

func caseProviderStart(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	var (
		version  int64
		user     string
		ssl      bool
		clientDN string
	)

	err := h.db.QueryRowContext(ctx, `
		SELECT (SELECT COALESCE(MAX(version), 0) FROM nvsentinel_schema_migrations),
		       current_user, s.ssl, COALESCE(s.client_dn, '')
		FROM pg_stat_ssl AS s WHERE s.pid = pg_backend_pid()`).Scan(&version, &user, &ssl, &clientDN)
	if err != nil {
		return "", fmt.Errorf("reading the session's schema version and TLS state: %w", err)
	}

	var c checks

	c.that(version >= pgprovider.RequiredSchemaVersion, "schema version %d is below the required %d",
		version, pgprovider.RequiredSchemaVersion)
	c.that(ssl, "the session does not use TLS")
	c.that(clientDN != "", "the session presented no client certificate")
	c.equal("current_user", user, os.Getenv("DATASTORE_USERNAME"))

	if err := c.err(); err != nil {
		return "", err
	}

	return fmt.Sprintf("connected as %s over TLS with client certificate %s (sslmode %s); "+
		"WaitForSchemaVersion returned after %.3fs at schema version %d (required %d)",
		user, clientDN, os.Getenv("DATASTORE_SSLMODE"), h.waited.Seconds(), version,
		pgprovider.RequiredSchemaVersion), nil
}

func caseInsertHealthEvent(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	node := h.name("node")
	event := h.healthEvent(node)

	id, err := h.insert(ctx, event)
	if err != nil {
		return "", err
	}

	var c checks

	c.equal("column node_name", c.read(h.columnText(ctx, id, "node_name")), node)
	c.equal("column event_type", c.read(h.columnText(ctx, id, "event_type")), event.CheckName)
	c.equal("column severity", c.read(h.columnText(ctx, id, "severity")), event.ComponentClass)
	c.equal("column recommended_action", c.read(h.columnText(ctx, id, "recommended_action")), "RESTART_BM")
	c.equal("document healthevent.nodeName", c.read(h.docText(ctx, id, "healthevent", "nodeName")), node)
	c.equal("document healthevent.metadata.idempotencyKey",
		c.read(h.docText(ctx, id, "healthevent", "metadata", "idempotencyKey")), idempotencyKey(event))

	found, err := h.healthStore.FindHealthEventsByNode(ctx, node)
	if err != nil {
		return "", fmt.Errorf("FindHealthEventsByNode: %w", err)
	}

	c.equal("FindHealthEventsByNode count", len(found), 1)

	if err := c.err(); err != nil {
		return "", err
	}

	return fmt.Sprintf("InsertMany stored health event %s (idempotency key %s); columns and document match",
		id, idempotencyKey(event)), nil
}

// caseInsertDuplicate resends an event as a platform connector does after a
// lost acknowledgement; NVSentinel counts the resend as stored only when the
// insert fails with a unique violation of the idempotency index, which its
// classifier turns into a BulkDocumentError that is DuplicateOn that index.
func caseInsertDuplicate(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	event := h.healthEvent(h.name("node"))
	if _, err := h.insert(ctx, event); err != nil {
		return "", fmt.Errorf("first insert: %w", err)
	}

	resendErr := h.insertEvents(ctx, event)

	rows, err := h.countByKey(ctx, idempotencyKey(event))
	if err != nil {
		return "", err
	}

	if resendErr == nil {
		return "", fmt.Errorf("the resend with idempotency key %s succeeded and %d rows carry the key; "+
			"NVSentinel expects a unique violation of %s", idempotencyKey(event), rows,
			datastore.HealthEventIdempotencyIndexName)
	}

	docErr, classified := classifyDuplicate(resendErr)
	if !classified {
		return "", fmt.Errorf("the resend failed without a PostgreSQL error: %w", resendErr)
	}

	var c checks

	c.that(docErr.DuplicateOn(datastore.HealthEventIdempotencyIndexName),
		"the resend failed, but not as a duplicate on %s (duplicate=%t, index %q): %v",
		datastore.HealthEventIdempotencyIndexName, docErr.Duplicate, docErr.IndexName, resendErr)
	c.equal("rows with the idempotency key", rows, 1)

	if err := c.err(); err != nil {
		return "", err
	}

	return fmt.Sprintf("resend refused as a duplicate on %s: %v", docErr.IndexName, resendErr), nil
}

// classifyDuplicate reads the PostgreSQL error the way NVSentinel's
// idempotent insert does: SQLSTATE 23505 and the violated index's name.
func classifyDuplicate(err error) (datastore.BulkDocumentError, bool) {
	var pqErr *pq.Error
	if !errors.As(err, &pqErr) {
		return datastore.BulkDocumentError{}, false
	}

	return datastore.BulkDocumentError{
		IndexName: pqErr.Constraint,
		Duplicate: pqErr.Code == pqerror.UniqueViolation,
		Message:   pqErr.Message,
	}, true
}

func (h *harness) countByKey(ctx context.Context, key string) (int, error) {
	var n int

	err := h.db.QueryRowContext(ctx,
		`SELECT count(*) FROM health_events WHERE document #>> '{healthevent,metadata,idempotencyKey}' = $1`,
		key).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("counting rows with idempotency key %s: %w", key, err)
	}

	return n, nil
}

// caseGenericInsertMany stores a document that is not a HealthEventWithStatus,
// which the client sends down its generic path (column "data").
func caseGenericInsertMany(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	node := h.name("node")
	doc := map[string]any{
		"createdAt":         time.Now().UTC(),
		"healthevent":       map[string]any{"nodeName": node, "agent": "gpu-health-monitor", "checkName": "GpuXidError"},
		"healtheventstatus": map[string]any{},
	}

	res, err := h.healthClient.InsertMany(ctx, []any{doc})
	if err != nil {
		return "", fmt.Errorf("InsertMany(map document): %w", err)
	}

	if len(res.InsertedIDs) != 1 {
		return "", fmt.Errorf("InsertMany returned %d ids, want 1", len(res.InsertedIDs))
	}

	id := fmt.Sprint(res.InsertedIDs[0])

	found, err := h.healthClient.FindOne(ctx, map[string]any{"_id": id}, nil)
	if err != nil {
		return "", fmt.Errorf("FindOne(_id %s): %w", id, err)
	}

	var back struct {
		HealthEvent struct {
			NodeName string `json:"nodeName"`
		} `json:"healthevent"`
	}

	if err := found.Decode(&back); err != nil {
		return "", fmt.Errorf("FindOne(_id %s) decode: %w", id, err)
	}

	if back.HealthEvent.NodeName != node {
		return "", fmt.Errorf("FindOne(_id %s) returned healthevent.nodeName %q, want %q", id, back.HealthEvent.NodeName, node)
	}

	return fmt.Sprintf("InsertMany stored the map document as %s; FindOne by _id reads it back", id), nil
}

// caseClientQuarantine is fault-quarantine's status write: the convenience
// helper over DatabaseClient.UpdateDocumentStatusFields.
func caseClientQuarantine(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	id, err := h.insertOnNode(ctx, h.name("node"))
	if err != nil {
		return "", err
	}

	spanID := randomHex(8)

	err = client.UpdateHealthEventNodeQuarantineStatus(ctx, h.healthClient, id, string(model.Quarantined), spanID)
	if err != nil {
		return "", fmt.Errorf("UpdateHealthEventNodeQuarantineStatus: %w", err)
	}

	var c checks

	c.equal("column node_quarantined", c.read(h.columnText(ctx, id, "node_quarantined")), model.Quarantined)
	c.equal("document healtheventstatus.nodequarantined",
		c.read(h.docText(ctx, id, "healtheventstatus", "nodequarantined")), model.Quarantined)
	c.that(c.read(h.docText(ctx, id, "healtheventstatus", "quarantinefinishtimestamp", "seconds")) != "",
		"document healtheventstatus.quarantinefinishtimestamp.seconds is missing")
	c.equal("document healtheventstatus.spanids."+tracing.ServiceFaultQuarantine,
		c.read(h.docText(ctx, id, "healtheventstatus", "spanids", tracing.ServiceFaultQuarantine)), spanID)

	if err := c.err(); err != nil {
		return "", err
	}

	return fmt.Sprintf("event %s: column and document say Quarantined, finish timestamp and span id set", id), nil
}

func caseStoreQuarantine(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	id, err := h.insertOnNode(ctx, h.name("node"))
	if err != nil {
		return "", err
	}

	spanID := randomHex(8)

	if err := h.healthStore.UpdateNodeQuarantineStatus(ctx, id, datastore.Quarantined, spanID); err != nil {
		return "", fmt.Errorf("UpdateNodeQuarantineStatus: %w", err)
	}

	var c checks

	c.equal("column node_quarantined", c.read(h.columnText(ctx, id, "node_quarantined")), datastore.Quarantined)
	c.equal("document healtheventstatus.nodequarantined",
		c.read(h.docText(ctx, id, "healtheventstatus", "nodequarantined")), datastore.Quarantined)
	c.equal("document healtheventstatus.spanids."+tracing.ServiceFaultQuarantine,
		c.read(h.docText(ctx, id, "healtheventstatus", "spanids", tracing.ServiceFaultQuarantine)), spanID)

	if err := c.err(); err != nil {
		return "", err
	}

	return fmt.Sprintf("event %s: column and document say Quarantined, span id set", id), nil
}

func caseStoreHealthEventStatus(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	id, err := h.insertOnNode(ctx, h.name("node"))
	if err != nil {
		return "", err
	}

	quarantined := datastore.Quarantined
	remediated := false
	status := datastore.HealthEventStatus{
		NodeQuarantined:           &quarantined,
		QuarantineFinishTimestamp: timestamppb.Now(),
		UserPodsEvictionStatus:    datastore.OperationStatus{Status: datastore.StatusInProgress, Message: "draining"},
		FaultRemediated:           &remediated,
	}

	if err := h.healthStore.UpdateHealthEventStatus(ctx, id, status); err != nil {
		return "", fmt.Errorf("UpdateHealthEventStatus: %w", err)
	}

	var c checks

	c.equal("column node_quarantined", c.read(h.columnText(ctx, id, "node_quarantined")), quarantined)
	c.that(c.read(h.columnText(ctx, id, "quarantine_finish_timestamp")) != "", "column quarantine_finish_timestamp is NULL")
	c.equal("column user_pods_eviction_status", c.read(h.columnText(ctx, id, "user_pods_eviction_status")),
		datastore.StatusInProgress)
	c.equal("column user_pods_eviction_message", c.read(h.columnText(ctx, id, "user_pods_eviction_message")), "draining")
	c.equal("column fault_remediated", c.read(h.columnText(ctx, id, "fault_remediated")), "false")
	c.equal("document healtheventstatus.nodequarantined",
		c.read(h.docText(ctx, id, "healtheventstatus", "nodequarantined")), quarantined)
	c.equal("document healtheventstatus.userpodsevictionstatus.status",
		c.read(h.docText(ctx, id, "healtheventstatus", "userpodsevictionstatus", "status")), datastore.StatusInProgress)
	c.equal("document healtheventstatus.faultremediated.value",
		c.read(h.docText(ctx, id, "healtheventstatus", "faultremediated", "value")), "false")

	if err := c.err(); err != nil {
		return "", err
	}

	return fmt.Sprintf("event %s: status columns and document updated together", id), nil
}

// caseDrainerInProgress is node-drainer's first write for an event: a
// conditional UpdateDocument that only moves the status once.
func caseDrainerInProgress(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	id, err := h.insertOnNode(ctx, h.name("node"))
	if err != nil {
		return "", err
	}

	filter := map[string]any{
		"_id": id,
		"healtheventstatus.userpodsevictionstatus.status": map[string]any{"$ne": string(model.StatusInProgress)},
	}
	update := map[string]any{
		"$set": map[string]any{"healtheventstatus.userpodsevictionstatus.status": string(model.StatusInProgress)},
	}

	first, err := h.healthClient.UpdateDocument(ctx, filter, update)
	if err != nil {
		return "", fmt.Errorf("UpdateDocument (first): %w", err)
	}

	second, err := h.healthClient.UpdateDocument(ctx, filter, update)
	if err != nil {
		return "", fmt.Errorf("UpdateDocument (second): %w", err)
	}

	var c checks

	c.equal("first UpdateDocument MatchedCount", first.MatchedCount, 1)
	c.equal("second UpdateDocument MatchedCount", second.MatchedCount, 0)
	c.equal("document healtheventstatus.userpodsevictionstatus.status",
		c.read(h.docText(ctx, id, "healtheventstatus", "userpodsevictionstatus", "status")), model.StatusInProgress)

	if err := c.err(); err != nil {
		return "", err
	}

	return fmt.Sprintf("event %s: InProgress set by the first UpdateDocument, the second matched nothing", id), nil
}

// caseDrainerRecovery: after a restart node-drainer resumes the drains it had
// started, found with FindHealthEventsByStatus, which reads the
// user_pods_eviction_status column; its InProgress write is a document update.
func caseDrainerRecovery(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	node := h.name("node")

	id, err := h.insertOnNode(ctx, node)
	if err != nil {
		return "", err
	}

	if err := h.setInProgress(ctx, id); err != nil {
		return "", err
	}

	inProgress, err := h.healthStore.FindHealthEventsByStatus(ctx, datastore.StatusInProgress)
	if err != nil {
		return "", fmt.Errorf("FindHealthEventsByStatus: %w", err)
	}

	if !containsNode(inProgress, node) {
		column, err := h.columnText(ctx, id, "user_pods_eviction_status")
		if err != nil {
			return "", err
		}

		return "", fmt.Errorf("FindHealthEventsByStatus(InProgress) does not return event %s, whose document says "+
			"InProgress: its user_pods_eviction_status column is %q", id, column)
	}

	return fmt.Sprintf("FindHealthEventsByStatus(InProgress) returns event %s after node-drainer's InProgress write", id), nil
}

func caseStorePodEviction(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	node := h.name("node")

	id, err := h.insertOnNode(ctx, node)
	if err != nil {
		return "", err
	}

	status := datastore.OperationStatus{Status: datastore.StatusSucceeded, Message: "all user pods evicted"}
	if err := h.healthStore.UpdatePodEvictionStatus(ctx, id, status); err != nil {
		return "", fmt.Errorf("UpdatePodEvictionStatus: %w", err)
	}

	var c checks

	c.equal("column user_pods_eviction_status", c.read(h.columnText(ctx, id, "user_pods_eviction_status")), status.Status)
	c.equal("column user_pods_eviction_message", c.read(h.columnText(ctx, id, "user_pods_eviction_message")), status.Message)
	c.equal("document healtheventstatus.userpodsevictionstatus.status",
		c.read(h.docText(ctx, id, "healtheventstatus", "userpodsevictionstatus", "status")), status.Status)
	c.equal("document healtheventstatus.userpodsevictionstatus.message",
		c.read(h.docText(ctx, id, "healtheventstatus", "userpodsevictionstatus", "message")), status.Message)

	// Both reads below use the column, as node-drainer's checks do.
	drained, err := h.healthStore.CheckIfNodeAlreadyDrained(ctx, node)
	if err != nil {
		return "", fmt.Errorf("CheckIfNodeAlreadyDrained: %w", err)
	}

	c.that(drained, "CheckIfNodeAlreadyDrained(%s) is false after the eviction succeeded", node)

	bySucceeded, err := h.healthStore.FindHealthEventsByStatus(ctx, datastore.StatusSucceeded)
	if err != nil {
		return "", fmt.Errorf("FindHealthEventsByStatus: %w", err)
	}

	c.that(containsNode(bySucceeded, node), "FindHealthEventsByStatus(Succeeded) does not return the event of %s", node)

	if err := c.err(); err != nil {
		return "", err
	}

	return fmt.Sprintf("event %s: eviction Succeeded in columns and document; node counts as drained", id), nil
}

func caseStoreRemediation(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	node := h.name("node")

	id, err := h.insertOnNode(ctx, node)
	if err != nil {
		return "", err
	}

	if err := h.healthStore.UpdateRemediationStatus(ctx, id, true); err != nil {
		return "", fmt.Errorf("UpdateRemediationStatus: %w", err)
	}

	var c checks

	c.equal("column fault_remediated", c.read(h.columnText(ctx, id, "fault_remediated")), "true")
	c.that(c.read(h.columnText(ctx, id, "last_remediation_timestamp")) != "", "column last_remediation_timestamp is NULL")
	c.equal("document healtheventstatus.faultremediated.value",
		c.read(h.docText(ctx, id, "healtheventstatus", "faultremediated", "value")), "true")

	latest, err := h.healthStore.FindLatestEventForNode(ctx, node)
	if err != nil {
		return "", fmt.Errorf("FindLatestEventForNode: %w", err)
	}

	c.that(latest != nil && latest.HealthEventStatus.FaultRemediated != nil && *latest.HealthEventStatus.FaultRemediated,
		"FindLatestEventForNode does not decode faultremediated as true")

	if err := c.err(); err != nil {
		return "", err
	}

	return fmt.Sprintf("event %s: fault_remediated true in column and document, decoded as true", id), nil
}

func containsNode(events []datastore.HealthEventWithStatus, node string) bool {
	for _, event := range events {
		if nodeNameOf(event) == node {
			return true
		}
	}

	return false
}

// nodeNameOf reads the node from a decoded event, whose health event the
// PostgreSQL provider leaves as the stored JSON map.
func nodeNameOf(event datastore.HealthEventWithStatus) string {
	fields, ok := event.HealthEvent.(map[string]any)
	if !ok {
		return ""
	}

	name, _ := fields["nodeName"].(string)

	return name
}
