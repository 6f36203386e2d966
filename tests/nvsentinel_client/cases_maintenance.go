package main

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"time"

	"github.com/nvidia/nvsentinel/data-models/pkg/model"
)

// maintenanceEvent is a scheduled GCP maintenance as csp-health-monitor
// normalises it, first seen now and starting at start.
func (h *harness) maintenanceEvent(cluster, node string, start time.Time) *model.MaintenanceEvent {
	now := time.Now().UTC().Truncate(time.Microsecond)
	start = start.UTC().Truncate(time.Microsecond)

	return &model.MaintenanceEvent{
		EventID:                h.name("maintenance"),
		CSP:                    model.CSPGCP,
		ClusterName:            cluster,
		ResourceType:           "gce_instance",
		ResourceID:             h.name("instance"),
		MaintenanceType:        model.TypeScheduled,
		Status:                 model.StatusDetected,
		CSPStatus:              model.CSPStatusPending,
		ScheduledStartTime:     &start,
		EventReceivedTimestamp: now,
		LastUpdatedTimestamp:   now,
		RecommendedAction:      "RESTART_VM",
		Metadata:               map[string]string{"zone": "us-central1-a"},
		NodeName:               node,
	}
}

type maintenanceRow struct {
	rows      int
	status    string
	cspStatus string
	docStatus string
	docCSP    string
	docEnd    string
}

func (h *harness) maintenanceRow(ctx context.Context, eventID string) (maintenanceRow, error) {
	var (
		row                         maintenanceRow
		status, cspStatus           sql.NullString
		docStatus, docCSP, docEnded sql.NullString
	)

	err := h.db.QueryRowContext(ctx, `
		SELECT count(*) OVER (), status, csp_status,
		       document->>'status', document->>'cspStatus', document->>'actualEndTime'
		FROM maintenance_events WHERE event_id = $1`, eventID).
		Scan(&row.rows, &status, &cspStatus, &docStatus, &docCSP, &docEnded)
	if err != nil {
		return row, fmt.Errorf("reading maintenance event %s: %w", eventID, err)
	}

	row.status, row.cspStatus = status.String, cspStatus.String
	row.docStatus, row.docCSP, row.docEnd = docStatus.String, docCSP.String, docEnded.String

	return row, nil
}

func caseMaintenanceUpsert(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	event := h.maintenanceEvent(h.name("cluster"), h.name("node"), time.Now().Add(time.Hour))
	if err := h.maintenanceStore.UpsertMaintenanceEvent(ctx, event); err != nil {
		return "", fmt.Errorf("UpsertMaintenanceEvent (insert): %w", err)
	}

	started := time.Now().UTC().Truncate(time.Microsecond)
	updated := *event
	updated.Status = model.StatusMaintenanceOngoing
	updated.CSPStatus = model.CSPStatusOngoing
	updated.ActualStartTime = &started
	updated.LastUpdatedTimestamp = started

	if err := h.maintenanceStore.UpsertMaintenanceEvent(ctx, &updated); err != nil {
		return "", fmt.Errorf("UpsertMaintenanceEvent (update): %w", err)
	}

	row, err := h.maintenanceRow(ctx, event.EventID)
	if err != nil {
		return "", err
	}

	var c checks

	c.equal("rows for the event id", row.rows, 1)
	c.equal("column status", row.status, model.StatusMaintenanceOngoing)
	c.equal("column csp_status", row.cspStatus, model.CSPStatusOngoing)
	c.equal("document status", row.docStatus, model.StatusMaintenanceOngoing)
	c.equal("document cspStatus", row.docCSP, model.CSPStatusOngoing)

	clientDetail, err := h.maintenanceClientUpsert(ctx, &c)
	if err != nil {
		return "", err
	}

	if err := c.err(); err != nil {
		return "", err
	}

	return fmt.Sprintf("store upsert inserted then updated %s in place (status and CSP status in column and "+
		"document); %s", event.EventID, clientDetail), nil
}

// maintenanceClientUpsert runs the same insert-then-update through the
// DatabaseClient of the maintenance table, whose counts tell insert from update.
func (h *harness) maintenanceClientUpsert(ctx context.Context, c *checks) (string, error) {
	event := h.maintenanceEvent(h.name("cluster"), h.name("node"), time.Now().Add(time.Hour))
	filter := map[string]any{"eventId": event.EventID}

	inserted, err := h.maintenanceClient.UpsertDocument(ctx, filter, event)
	if err != nil {
		return "", fmt.Errorf("DatabaseClient.UpsertDocument (insert): %w", err)
	}

	event.CSPStatus = model.CSPStatusActive

	updated, err := h.maintenanceClient.UpsertDocument(ctx, filter, event)
	if err != nil {
		return "", fmt.Errorf("DatabaseClient.UpsertDocument (update): %w", err)
	}

	c.equal("client upsert 1 UpsertedCount", inserted.UpsertedCount, 1)
	c.equal("client upsert 2 UpsertedCount", updated.UpsertedCount, 0)
	c.equal("client upsert 2 ModifiedCount", updated.ModifiedCount, 1)

	row, err := h.maintenanceRow(ctx, event.EventID)
	if err != nil {
		return "", err
	}

	c.equal("client upsert column csp_status", row.cspStatus, model.CSPStatusActive)

	return "DatabaseClient.UpsertDocument reported insert then update", nil
}

func caseMaintenanceQueries(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	cluster, node := h.name("cluster"), h.name("node")

	done := h.maintenanceEvent(cluster, node, time.Now().Add(-2*time.Hour))
	done.Status = model.StatusMaintenanceComplete
	done.EventReceivedTimestamp = done.EventReceivedTimestamp.Add(-time.Hour)

	active := h.maintenanceEvent(cluster, node, time.Now().Add(time.Hour))

	for _, event := range []*model.MaintenanceEvent{done, active} {
		if err := h.maintenanceStore.UpsertMaintenanceEvent(ctx, event); err != nil {
			return "", fmt.Errorf("UpsertMaintenanceEvent: %w", err)
		}
	}

	var c checks

	if err := h.checkFindOneByEventID(ctx, &c, active); err != nil {
		return "", err
	}

	latest, found, err := h.maintenanceStore.FindLatestActiveEventByNodeAndType(ctx, node, model.TypeScheduled,
		[]model.InternalStatus{model.StatusDetected, model.StatusQuarantineTriggered})
	if err != nil {
		return "", fmt.Errorf("FindLatestActiveEventByNodeAndType: %w", err)
	}

	c.that(found && latest.EventID == active.EventID,
		"FindLatestActiveEventByNodeAndType did not return the active event %s", active.EventID)

	byStatus, err := h.maintenanceStore.FindActiveEventsByStatuses(ctx, model.CSPGCP, []string{string(model.StatusDetected)})
	if err != nil {
		return "", fmt.Errorf("FindActiveEventsByStatuses: %w", err)
	}

	c.that(containsEvent(byStatus, active.EventID) && !containsEvent(byStatus, done.EventID),
		"FindActiveEventsByStatuses(gcp, DETECTED) should list %s and not the completed %s", active.EventID, done.EventID)

	last, found, err := h.maintenanceStore.GetLastProcessedEventTimestampByCSP(ctx, cluster, model.CSPGCP, "gcp")
	if err != nil {
		return "", fmt.Errorf("GetLastProcessedEventTimestampByCSP: %w", err)
	}

	c.that(found && last.Equal(active.EventReceivedTimestamp),
		"GetLastProcessedEventTimestampByCSP returned %v (found %t), want %v", last, found, active.EventReceivedTimestamp)

	if err := c.err(); err != nil {
		return "", err
	}

	return "FindOne by eventId, latest active by node and type, active by status and last received " +
		"timestamp by CSP all return the expected event", nil
}

func (h *harness) checkFindOneByEventID(ctx context.Context, c *checks, want *model.MaintenanceEvent) error {
	res, err := h.maintenanceClient.FindOne(ctx, map[string]any{"eventId": want.EventID}, nil)
	if err != nil {
		return fmt.Errorf("DatabaseClient.FindOne(eventId): %w", err)
	}

	var got model.MaintenanceEvent
	if err := res.Decode(&got); err != nil {
		return fmt.Errorf("DatabaseClient.FindOne(eventId) decode: %w", err)
	}

	c.equal("FindOne(eventId) eventId", got.EventID, want.EventID)
	c.equal("FindOne(eventId) nodeName", got.NodeName, want.NodeName)
	c.equal("FindOne(eventId) status", got.Status, want.Status)

	return nil
}

func containsEvent(events []model.MaintenanceEvent, eventID string) bool {
	return slices.ContainsFunc(events, func(e model.MaintenanceEvent) bool { return e.EventID == eventID })
}

func caseMaintenanceOngoing(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	node := h.name("node")

	event := h.maintenanceEvent(h.name("cluster"), node, time.Now().Add(time.Hour))
	if err := h.maintenanceStore.UpsertMaintenanceEvent(ctx, event); err != nil {
		return "", fmt.Errorf("UpsertMaintenanceEvent: %w", err)
	}

	latest, found, err := h.maintenanceStore.FindLatestOngoingEventByNode(ctx, node)
	if err != nil {
		return "", fmt.Errorf("FindLatestOngoingEventByNode: %w", err)
	}

	if !found || latest.EventID != event.EventID {
		return "", fmt.Errorf("FindLatestOngoingEventByNode(%s) found=%t; want the DETECTED %s maintenance %s (%s)",
			node, found, event.MaintenanceType, event.EventID, h.byNodeAndType(ctx, event))
	}

	return fmt.Sprintf("FindLatestOngoingEventByNode returned the DETECTED event %s", event.EventID), nil
}

// caseMaintenanceTriggers walks the trigger engine's reads: due for quarantine,
// the status it sets, a later CSP update that must not undo it, due for healthy.
func caseMaintenanceTriggers(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	event := h.maintenanceEvent(h.name("cluster"), h.name("node"), time.Now().Add(5*time.Minute))
	if err := h.maintenanceStore.UpsertMaintenanceEvent(ctx, event); err != nil {
		return "", fmt.Errorf("UpsertMaintenanceEvent: %w", err)
	}

	var c checks

	if err := h.checkDue(ctx, &c, event.EventID, "FindEventsToTriggerQuarantine", func(window time.Duration) (
		[]model.MaintenanceEvent, error) {
		return h.maintenanceStore.FindEventsToTriggerQuarantine(ctx, window)
	}, 10*time.Minute, time.Minute); err != nil {
		return "", err
	}

	if err := h.maintenanceStore.UpdateEventStatus(ctx, event.EventID, model.StatusQuarantineTriggered); err != nil {
		return "", fmt.Errorf("UpdateEventStatus: %w", err)
	}

	ended := time.Now().UTC().Add(-time.Minute).Truncate(time.Microsecond)
	later := *event
	later.Status = model.StatusMaintenanceOngoing
	later.CSPStatus = model.CSPStatusOngoing
	later.ActualEndTime = &ended
	later.LastUpdatedTimestamp = time.Now().UTC()

	if err := h.maintenanceStore.UpsertMaintenanceEvent(ctx, &later); err != nil {
		return "", fmt.Errorf("UpsertMaintenanceEvent (CSP update): %w", err)
	}

	row, err := h.maintenanceRow(ctx, event.EventID)
	if err != nil {
		return "", err
	}

	c.equal("column status after the CSP update", row.status, model.StatusQuarantineTriggered)
	c.equal("document status after the CSP update", row.docStatus, model.StatusQuarantineTriggered)
	c.equal("column csp_status after the CSP update", row.cspStatus, model.CSPStatusOngoing)

	if err := h.checkDue(ctx, &c, event.EventID, "FindEventsToTriggerHealthy", func(delay time.Duration) (
		[]model.MaintenanceEvent, error) {
		return h.maintenanceStore.FindEventsToTriggerHealthy(ctx, delay)
	}, 0, time.Hour); err != nil {
		return "", err
	}

	if err := c.err(); err != nil {
		return "", err
	}

	return "due for quarantine within 10m (not 1m); QUARANTINE_TRIGGERED kept through a CSP update; " +
		"due for healthy with no delay (not with 1h)", nil
}

// checkDue expects the event in find(due) and not in find(notDue).
func (h *harness) checkDue(ctx context.Context, c *checks, eventID, what string,
	find func(time.Duration) ([]model.MaintenanceEvent, error), due, notDue time.Duration) error {
	events, err := find(due)
	if err != nil {
		return fmt.Errorf("%s(%v): %w", what, due, err)
	}

	c.that(containsEvent(events, eventID), "%s(%v) does not list %s", what, due, eventID)

	events, err = find(notDue)
	if err != nil {
		return fmt.Errorf("%s(%v): %w", what, notDue, err)
	}

	c.that(!containsEvent(events, eventID), "%s(%v) lists %s, which is not due yet", what, notDue, eventID)

	return ctx.Err()
}

// byNodeAndType runs the query FindLatestOngoingEventByNode delegates to, with
// the event's own maintenance type, to tell a type mismatch from a missing row.
func (h *harness) byNodeAndType(ctx context.Context, event *model.MaintenanceEvent) string {
	_, found, err := h.maintenanceStore.FindLatestActiveEventByNodeAndType(ctx, event.NodeName, event.MaintenanceType,
		[]model.InternalStatus{model.StatusDetected, model.StatusQuarantineTriggered, model.StatusMaintenanceOngoing})
	if err != nil {
		return "FindLatestActiveEventByNodeAndType failed too: " + err.Error()
	}

	return fmt.Sprintf("FindLatestActiveEventByNodeAndType with type %s and the same statuses found=%t",
		event.MaintenanceType, found)
}
