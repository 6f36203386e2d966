package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/nvidia/nvsentinel/data-models/pkg/model"
	"github.com/nvidia/nvsentinel/data-models/pkg/protos"
	"github.com/nvidia/nvsentinel/store-client/pkg/client"
	"github.com/nvidia/nvsentinel/store-client/pkg/datastore"
	"github.com/nvidia/nvsentinel/store-client/pkg/query"
)

const nodeQuarantinedPath = "healtheventstatus.nodequarantined"

// insertQuarantined stores an event and gives it a quarantine status through
// fault-quarantine's own status write.
func (h *harness) insertQuarantined(ctx context.Context, node string, status model.Status) (string, error) {
	id, err := h.insertOnNode(ctx, node)
	if err != nil {
		return "", err
	}

	err = client.UpdateHealthEventNodeQuarantineStatus(ctx, h.healthClient, id, string(status), randomHex(8))
	if err != nil {
		return "", fmt.Errorf("UpdateHealthEventNodeQuarantineStatus(%s): %w", status, err)
	}

	return id, nil
}

// caseCancelQuarantineSession follows fault-quarantine's
// CancelLatestQuarantiningEvents: FindOne of the latest Quarantined or
// UnQuarantined event, then UpdateManyDocuments of the session since then.
func caseCancelQuarantineSession(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	node, otherNode := h.name("node"), h.name("node")
	ids := map[string]model.Status{}

	for _, step := range []struct {
		node   string
		status model.Status
	}{{node, model.Quarantined}, {node, model.AlreadyQuarantined}, {otherNode, model.Quarantined}} {
		id, err := h.insertQuarantined(ctx, step.node, step.status)
		if err != nil {
			return "", err
		}

		ids[id] = step.status
	}

	latest, err := h.findLatestQuarantining(ctx, node)
	if err != nil {
		return "", err
	}

	updateFilter := query.New().Build(query.And(
		query.Eq("healthevent.nodename", node),
		query.Gte("createdAt", latest.CreatedAt),
		query.In(nodeQuarantinedPath, []any{string(model.Quarantined), string(model.AlreadyQuarantined)}),
	))
	update := map[string]any{"$set": map[string]any{nodeQuarantinedPath: string(model.Cancelled)}}

	res, err := h.healthClient.UpdateManyDocuments(ctx, updateFilter, update)
	if err != nil {
		return "", fmt.Errorf("UpdateManyDocuments: %w", err)
	}

	var c checks

	c.equal("UpdateManyDocuments ModifiedCount", res.ModifiedCount, 2)

	for id := range ids {
		want := model.Cancelled
		if h.nodeOf(ctx, &c, id) == otherNode {
			want = model.Quarantined
		}

		c.equal("column node_quarantined of "+id, c.read(h.columnText(ctx, id, "node_quarantined")), want)
		c.equal("document nodequarantined of "+id, c.read(h.docText(ctx, id, "healtheventstatus", "nodequarantined")), want)
	}

	if err := c.err(); err != nil {
		return "", err
	}

	return "FindOne found the session's Quarantined event; UpdateManyDocuments cancelled its 2 events, " +
		"the other node's event kept Quarantined", nil
}

type latestQuarantining struct {
	CreatedAt         time.Time `json:"createdAt"`
	HealthEventStatus struct {
		NodeQuarantined string `json:"nodequarantined"`
	} `json:"healtheventstatus"`
}

func (h *harness) findLatestQuarantining(ctx context.Context, node string) (latestQuarantining, error) {
	var latest latestQuarantining

	filter := query.New().Build(query.And(
		query.Eq("healthevent.nodename", node),
		query.In(nodeQuarantinedPath, []any{string(model.Quarantined), string(model.UnQuarantined)}),
	))

	res, err := h.healthClient.FindOne(ctx, filter, &client.FindOneOptions{Sort: map[string]any{"createdAt": -1}})
	if err != nil {
		return latest, fmt.Errorf("FindOne(latest quarantining event): %w", err)
	}

	if err := res.Decode(&latest); err != nil {
		return latest, fmt.Errorf("FindOne(latest quarantining event) decode: %w", err)
	}

	if latest.HealthEventStatus.NodeQuarantined != string(model.Quarantined) || latest.CreatedAt.IsZero() {
		return latest, fmt.Errorf("FindOne(latest quarantining event) returned status %q createdAt %v, want Quarantined",
			latest.HealthEventStatus.NodeQuarantined, latest.CreatedAt)
	}

	return latest, nil
}

func (h *harness) nodeOf(ctx context.Context, c *checks, id string) string {
	return c.read(h.columnText(ctx, id, "node_name"))
}

func unresolvedOnNode(node string) *query.Builder {
	return query.New().Build(query.And(
		query.Or(
			query.Eq(nodeQuarantinedPath, nil),
			query.Eq(nodeQuarantinedPath, ""),
			query.Eq(nodeQuarantinedPath, string(model.StatusNotStarted)),
		),
		query.Eq("healthevent.nodename", node),
	))
}

// caseColdStartQuery runs fault-quarantine's cold-start recovery read: the
// unresolved events, in creation order, in bounded batches.
func caseColdStartQuery(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	node := h.name("node")

	first, err := h.insertOnNode(ctx, node)
	if err != nil {
		return "", err
	}

	if _, err := h.insertQuarantined(ctx, node, model.Quarantined); err != nil {
		return "", err
	}

	last, err := h.insertOnNode(ctx, node)
	if err != nil {
		return "", err
	}

	var (
		got     []string
		batches int
	)

	err = h.healthStore.FindHealthEventsByQueryBatched(ctx, unresolvedOnNode(node), 1,
		func(batch []datastore.HealthEventWithStatus) error {
			batches++

			for _, event := range batch {
				got = append(got, fmt.Sprint(event.RawEvent["id"]))
			}

			return nil
		})
	if err != nil {
		return "", fmt.Errorf("FindHealthEventsByQueryBatched: %w", err)
	}

	var c checks

	c.equal("batched ids (oldest first)", strings.Join(got, ","), first+","+last)
	c.equal("batches of one", batches, 2)

	newest, err := h.healthStore.FindLatestHealthEventByQuery(ctx, unresolvedOnNode(node))
	if err != nil {
		return "", fmt.Errorf("FindLatestHealthEventByQuery: %w", err)
	}

	c.that(newest != nil, "FindLatestHealthEventByQuery found nothing")

	if newest != nil {
		lastKey := c.read(h.docText(ctx, last, "healthevent", "metadata", "idempotencyKey"))
		c.equal("FindLatestHealthEventByQuery idempotency key", keyOf(*newest), lastKey)
	}

	if err := c.err(); err != nil {
		return "", err
	}

	return "cold-start query returned the 2 unquarantined events oldest first in batches of 1, " +
		"skipping the quarantined one; the latest matches the newest", nil
}

func keyOf(event datastore.HealthEventWithStatus) string {
	fields, _ := event.HealthEvent.(map[string]any)
	metadata, _ := fields["metadata"].(map[string]any)
	key, _ := metadata[datastore.HealthEventIdempotencyKeyMetadataField].(string)

	return key
}

type remediationDoc struct {
	HealthEvent struct {
		NodeName           string `json:"nodeName"`
		GeneratedTimestamp *struct {
			Seconds int64 `json:"seconds"`
		} `json:"generatedTimestamp"`
	} `json:"healthevent"`
}

// caseFindByID is fault-quarantine's lookup of the events a recovery closes:
// Find with an "_id" $in filter, decoded document by document.
func caseFindByID(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	node := h.name("node")
	ids := make([]any, 0, 2)

	for range 2 {
		id, err := h.insertOnNode(ctx, node)
		if err != nil {
			return "", err
		}

		ids = append(ids, id)
	}

	if _, err := h.insertOnNode(ctx, h.name("node")); err != nil {
		return "", err
	}

	cursor, err := h.healthClient.Find(ctx, query.New().Build(query.In("_id", ids)), nil)
	if err != nil {
		return "", fmt.Errorf("Find(_id $in): %w", err)
	}

	defer cursor.Close(ctx)

	var c checks

	found := 0

	for cursor.Next(ctx) {
		var doc remediationDoc
		if err := cursor.Decode(&doc); err != nil {
			return "", fmt.Errorf("Find(_id $in) decode: %w", err)
		}

		found++

		c.equal("healthevent.nodeName", doc.HealthEvent.NodeName, node)
		c.that(doc.HealthEvent.GeneratedTimestamp != nil && doc.HealthEvent.GeneratedTimestamp.Seconds > 0,
			"healthevent.generatedTimestamp.seconds is missing")
	}

	if err := cursor.Err(); err != nil {
		return "", fmt.Errorf("Find(_id $in) cursor: %w", err)
	}

	c.equal("documents found", found, 2)

	if err := c.err(); err != nil {
		return "", err
	}

	return "Find with _id $in returned exactly the 2 requested events with their generated timestamps", nil
}

// caseFindByNode runs the node-drainer reads: all events of a node, the
// latest one, the column filter and a query on the drain status.
func caseFindByNode(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	node := h.name("node")
	older, newer := h.healthEvent(node), h.healthEvent(node)

	olderID, err := h.insert(ctx, older)
	if err != nil {
		return "", err
	}

	if _, err := h.insert(ctx, newer); err != nil {
		return "", err
	}

	if _, err := h.insertOnNode(ctx, h.name("node")); err != nil {
		return "", err
	}

	if err := h.setInProgress(ctx, olderID); err != nil {
		return "", err
	}

	var c checks

	byNode, err := h.healthStore.FindHealthEventsByNode(ctx, node)
	if err != nil {
		return "", fmt.Errorf("FindHealthEventsByNode: %w", err)
	}

	c.equal("FindHealthEventsByNode keys (newest first)", keysOf(byNode),
		idempotencyKey(newer)+","+idempotencyKey(older))

	latest, err := h.healthStore.FindLatestEventForNode(ctx, node)
	if err != nil {
		return "", fmt.Errorf("FindLatestEventForNode: %w", err)
	}

	c.that(latest != nil && keyOf(*latest) == idempotencyKey(newer), "FindLatestEventForNode did not return the newest event")

	byFilter, err := h.healthStore.FindHealthEventsByFilter(ctx, map[string]any{"node_name": node})
	if err != nil {
		return "", fmt.Errorf("FindHealthEventsByFilter: %w", err)
	}

	c.equal("FindHealthEventsByFilter(node_name) count", len(byFilter), 2)

	inProgress, err := h.healthStore.FindHealthEventsByQuery(ctx, query.New().Build(query.And(
		query.Eq("healthevent.nodename", node),
		query.Eq("healtheventstatus.userpodsevictionstatus.status", string(model.StatusInProgress)),
	)))
	if err != nil {
		return "", fmt.Errorf("FindHealthEventsByQuery: %w", err)
	}

	c.equal("FindHealthEventsByQuery(InProgress) ids", idsOf(inProgress), olderID)

	if err := c.err(); err != nil {
		return "", err
	}

	return "by node (newest first), latest, column filter and the InProgress query all return the expected events", nil
}

func (h *harness) setInProgress(ctx context.Context, id string) error {
	_, err := h.healthClient.UpdateDocument(ctx,
		map[string]any{"_id": id},
		map[string]any{"$set": map[string]any{
			"healtheventstatus.userpodsevictionstatus.status": string(model.StatusInProgress),
		}})
	if err != nil {
		return fmt.Errorf("UpdateDocument(InProgress): %w", err)
	}

	return nil
}

func keysOf(events []datastore.HealthEventWithStatus) string {
	keys := make([]string, 0, len(events))
	for _, event := range events {
		keys = append(keys, keyOf(event))
	}

	return strings.Join(keys, ",")
}

func idsOf(events []datastore.HealthEventWithStatus) string {
	ids := make([]string, 0, len(events))
	for _, event := range events {
		ids = append(ids, fmt.Sprint(event.RawEvent["id"]))
	}

	return strings.Join(ids, ",")
}

// analyzerBaseStage is the stage health-events-analyzer puts before every
// rule's stages so that it never matches its own events.
func analyzerBaseStage() map[string]any {
	return map[string]any{"$match": map[string]any{
		"healthevent.agent": map[string]any{"$ne": "health-events-analyzer"},
		"healthevent.processingstrategy": map[string]any{
			"$eq": int32(protos.ProcessingStrategy_EXECUTE_REMEDIATION),
		},
	}}
}

// analyzerRuleStages are the stages of a repeated-fatal-error rule, with the
// "this." references already resolved to the triggering event's node.
func analyzerRuleStages(node string, atLeast int) []map[string]any {
	return []map[string]any{
		{"$match": map[string]any{
			"healthevent.nodename":  node,
			"healthevent.isfatal":   true,
			"healthevent.checkname": "GpuXidError",
		}},
		{"$count": "count"},
		{"$match": map[string]any{"count": map[string]any{"$gte": atLeast}}},
	}
}

func (h *harness) aggregate(ctx context.Context, pipeline []map[string]any) ([]map[string]any, error) {
	cursor, err := h.healthClient.Aggregate(ctx, pipeline)
	if err != nil {
		return nil, fmt.Errorf("Aggregate: %w", err)
	}

	defer cursor.Close(ctx)

	var rows []map[string]any
	if err := cursor.All(ctx, &rows); err != nil {
		return nil, fmt.Errorf("Aggregate cursor: %w", err)
	}

	return rows, nil
}

// analyzerCheck inserts three fatal events on one node and one elsewhere, then
// runs the rule at its threshold (must match with count 3) and above it (must not).
func (h *harness) analyzerCheck(ctx context.Context, prefix []map[string]any) (string, error) {
	node := h.name("node")

	for range 3 {
		if _, err := h.insertOnNode(ctx, node); err != nil {
			return "", err
		}
	}

	if _, err := h.insertOnNode(ctx, h.name("node")); err != nil {
		return "", err
	}

	matched, err := h.aggregate(ctx, append(append([]map[string]any{}, prefix...), analyzerRuleStages(node, 3)...))
	if err != nil {
		return "", err
	}

	above, err := h.aggregate(ctx, append(append([]map[string]any{}, prefix...), analyzerRuleStages(node, 4)...))
	if err != nil {
		return "", err
	}

	var c checks

	c.equal("results at threshold 3", len(matched), 1)

	if len(matched) == 1 {
		c.equal("count", matched[0]["count"], 3)
	}

	c.equal("results at threshold 4", len(above), 0)

	if err := c.err(); err != nil {
		return "", fmt.Errorf("%w (%s)", err, h.strategyKeys(ctx, node))
	}

	return "the rule matched with count 3 at threshold 3 and not at threshold 4", nil
}

func caseAnalyzerRule(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	return h.analyzerCheck(ctx, nil)
}

func caseAnalyzerBaseFilter(ctx context.Context, h *harness) (string, error) {
	if err := h.connect(ctx); err != nil {
		return "", err
	}

	return h.analyzerCheck(ctx, []map[string]any{analyzerBaseStage()})
}

// strategyKeys says under which spelling the node's documents carry the
// processing strategy, which the analyzer's base stage filters on.
func (h *harness) strategyKeys(ctx context.Context, node string) string {
	var lower, camel int

	err := h.db.QueryRowContext(ctx, `
		SELECT count(*) FILTER (WHERE document->'healthevent' ? 'processingstrategy'),
		       count(*) FILTER (WHERE document->'healthevent' ? 'processingStrategy')
		FROM health_events WHERE node_name = $1`, node).Scan(&lower, &camel)
	if err != nil {
		return "could not inspect the documents: " + err.Error()
	}

	return fmt.Sprintf("of the node's stored documents %d have healthevent.processingstrategy and %d "+
		"healthevent.processingStrategy", lower, camel)
}
