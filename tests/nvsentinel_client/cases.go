package main

import (
	"context"
	"time"
)

type checkCase struct {
	name string
	run  func(ctx context.Context, h *harness) (string, error)
	// limit overrides defaultCaseTimeout for cases that wait on a poll interval.
	limit time.Duration
}

const defaultCaseTimeout = 30 * time.Second

func (c checkCase) timeout() time.Duration {
	if c.limit > 0 {
		return c.limit
	}

	return defaultCaseTimeout
}

// allCases is the order run uses: the provider start first, because the
// services do nothing before it, then writes, reads and change streams.
func allCases() []checkCase {
	return []checkCase{
		{name: "provider_start_waits_for_schema_version", run: caseProviderStart},
		{name: "platform_connector_inserts_health_event_with_idempotency_key", run: caseInsertHealthEvent},
		{name: "platform_connector_resend_with_same_idempotency_key_is_a_duplicate", run: caseInsertDuplicate},
		{name: "generic_insert_many_stores_a_document_the_client_can_read_back", run: caseGenericInsertMany},
		{name: "fault_quarantine_client_marks_event_quarantined", run: caseClientQuarantine},
		{name: "health_event_store_update_node_quarantine_status", run: caseStoreQuarantine},
		{name: "health_event_store_update_health_event_status", run: caseStoreHealthEventStatus},
		{name: "node_drainer_client_sets_eviction_in_progress_once", run: caseDrainerInProgress},
		{name: "node_drainer_recovery_finds_drains_in_progress", run: caseDrainerRecovery},
		{name: "health_event_store_update_pod_eviction_status", run: caseStorePodEviction},
		{name: "health_event_store_update_remediation_status", run: caseStoreRemediation},
		{name: "fault_quarantine_cancels_latest_quarantine_session", run: caseCancelQuarantineSession},
		{name: "fault_quarantine_cold_start_query_finds_unquarantined_events", run: caseColdStartQuery},
		{name: "fault_quarantine_finds_documents_by_id", run: caseFindByID},
		{name: "node_drainer_finds_events_by_node_and_query", run: caseFindByNode},
		{name: "health_events_analyzer_rule_pipeline_counts_events", run: caseAnalyzerRule},
		{name: "health_events_analyzer_pipeline_with_its_base_filter_matches", run: caseAnalyzerBaseFilter},
		{name: "maintenance_event_upsert_inserts_then_updates", run: caseMaintenanceUpsert},
		{name: "maintenance_event_queries_by_id_node_status_and_csp", run: caseMaintenanceQueries},
		{name: "maintenance_event_latest_ongoing_by_node", run: caseMaintenanceOngoing},
		{name: "maintenance_event_trigger_queries_follow_status", run: caseMaintenanceTriggers},
		{name: "change_stream_hybrid_watcher_resumes_from_saved_token", run: caseWatchResume},
		{name: "change_stream_fault_quarantine_pipeline_delivers_processable_inserts", run: caseWatchFaultQuarantinePipeline},
		{name: "change_stream_node_drainer_pipeline_delivers_quarantine_updates", run: caseWatchNodeDrainerPipeline},
		{name: "change_stream_restart_delivers_backlog_before_next_live_write", run: caseWatchBacklogThenLive},
		{name: "change_stream_hybrid_poll_delivers_backlog_after_restart", run: caseWatchBacklogPoll, limit: 90 * time.Second},
	}
}
