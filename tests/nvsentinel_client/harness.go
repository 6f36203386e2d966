package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/XSAM/otelsql"
	"github.com/lib/pq"
	semconv "go.opentelemetry.io/otel/semconv/v1.24.0"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nvidia/nvsentinel/commons/pkg/tracing"
	"github.com/nvidia/nvsentinel/data-models/pkg/model"
	"github.com/nvidia/nvsentinel/data-models/pkg/protos"
	"github.com/nvidia/nvsentinel/store-client/pkg/client"
	"github.com/nvidia/nvsentinel/store-client/pkg/config"
	"github.com/nvidia/nvsentinel/store-client/pkg/datastore"
	pgprovider "github.com/nvidia/nvsentinel/store-client/pkg/datastore/providers/postgresql"
)

// schemaWaitLimit bounds the provider's schema wait: the schema is applied
// before this program starts, so a longer wait would only hide a missing one.
const schemaWaitLimit = 10 * time.Second

// harness holds what every NVSentinel service holds after start-up: one pool,
// the DatabaseClient for each table and the two stores, all over the pool
// opened here rather than by the provider constructor, which still runs DDL in
// this snapshot (the newest release only waits for the schema version).
type harness struct {
	runID string
	seq   int

	connectErr error
	connected  bool
	waited     time.Duration

	db                *sql.DB
	connString        string
	healthClient      client.DatabaseClient
	maintenanceClient client.DatabaseClient
	healthStore       *pgprovider.PostgreSQLHealthEventStore
	maintenanceStore  *pgprovider.PostgreSQLMaintenanceEventStore
}

func newHarness() *harness {
	return &harness{runID: randomHex(4)}
}

func randomHex(n int) string {
	buf := make([]byte, n)
	if _, err := rand.Read(buf); err != nil {
		panic(err)
	}

	return hex.EncodeToString(buf)
}

func (h *harness) close() {
	if h.db != nil {
		_ = h.db.Close()
	}
}

// connect runs the provider start once; every case calls it, so a failed start
// shows up as the same error in every case instead of as unrelated failures.
func (h *harness) connect(ctx context.Context) error {
	if h.connected || h.connectErr != nil {
		return h.connectErr
	}

	h.connectErr = h.open(ctx)
	h.connected = h.connectErr == nil

	return h.connectErr
}

func (h *harness) open(ctx context.Context) error {
	if provider := os.Getenv("DATASTORE_PROVIDER"); provider != string(datastore.ProviderPostgreSQL) {
		return fmt.Errorf("DATASTORE_PROVIDER is %q; this check needs %q", provider, datastore.ProviderPostgreSQL)
	}

	certPath := config.GetCertMountPath()

	healthConfig, err := config.NewDatabaseConfigForCollectionType(certPath, config.CollectionTypeHealthEvents)
	if err != nil {
		return fmt.Errorf("loading the health events config from DATASTORE_*: %w", err)
	}

	maintenanceConfig, err := config.NewDatabaseConfigForCollectionType(certPath, config.CollectionTypeMaintenanceEvents)
	if err != nil {
		return fmt.Errorf("loading the maintenance events config from DATASTORE_*: %w", err)
	}

	if err := h.openPool(ctx, healthConfig.GetConnectionURI()); err != nil {
		return err
	}

	start := time.Now()
	waitCtx, cancel := context.WithTimeout(ctx, schemaWaitLimit)

	defer cancel()

	if err := pgprovider.WaitForSchemaVersion(waitCtx, h.db); err != nil {
		return schemaError(ctx, h.db, err)
	}

	h.waited = time.Since(start)
	h.healthClient = pgprovider.NewPostgreSQLDatabaseClientWithConnString(
		h.db, healthConfig.GetCollectionName(), h.connString)
	h.maintenanceClient = pgprovider.NewPostgreSQLDatabaseClientWithConnString(
		h.db, maintenanceConfig.GetCollectionName(), h.connString)
	h.healthStore = pgprovider.NewPostgreSQLHealthEventStore(h.db)
	h.maintenanceStore = pgprovider.NewPostgreSQLMaintenanceEventStore(h.db)

	return nil
}

// openPool opens the pool the way the client factory does (otelsql over lib/pq)
// with the pool limits the provider constructor sets.
func (h *harness) openPool(ctx context.Context, connString string) error {
	db, err := otelsql.Open("postgres", connString,
		otelsql.WithAttributes(semconv.DBSystemPostgreSQL),
		otelsql.WithTracerProvider(tracing.GetChildOnlyTracerProvider()),
	)
	if err != nil {
		return fmt.Errorf("opening PostgreSQL: %w", err)
	}

	db.SetMaxOpenConns(25)
	db.SetMaxIdleConns(10)
	db.SetConnMaxLifetime(time.Hour)

	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return fmt.Errorf("connecting to PostgreSQL: %w", err)
	}

	h.db = db
	h.connString = connString

	return nil
}

// schemaError keeps the reason the schema is not ready: a wait cut short by
// our deadline reports only the deadline.
func schemaError(ctx context.Context, db *sql.DB, waitErr error) error {
	if err := pgprovider.ValidateSchemaVersion(ctx, db); err != nil {
		return fmt.Errorf("WaitForSchemaVersion: %v (last check: %w)", waitErr, err)
	}

	return fmt.Errorf("WaitForSchemaVersion: %w", waitErr)
}

// name gives every case its own node names and keys, so cases never see each
// other's rows and a re-run against the same database starts clean.
func (h *harness) name(kind string) string {
	h.seq++
	return fmt.Sprintf("nvs-check-%s-%s-%d", h.runID, kind, h.seq)
}

// healthEvent is a GPU XID event as a health monitor sends it, carrying the
// idempotency key the deployment platform connector derives per event.
func (h *harness) healthEvent(node string) *protos.HealthEvent {
	return &protos.HealthEvent{
		Version:            1,
		Agent:              "gpu-health-monitor",
		ComponentClass:     "GPU",
		CheckName:          "GpuXidError",
		IsFatal:            true,
		IsHealthy:          false,
		Message:            "XID 79: GPU has fallen off the bus",
		RecommendedAction:  protos.RecommendedAction_RESTART_BM,
		ErrorCode:          []string{"79"},
		EntitiesImpacted:   []*protos.Entity{{EntityType: "GPU", EntityValue: "0"}},
		Metadata:           map[string]string{datastore.HealthEventIdempotencyKeyMetadataField: h.name("key")},
		GeneratedTimestamp: timestamppb.Now(),
		NodeName:           node,
		ProcessingStrategy: protos.ProcessingStrategy_EXECUTE_REMEDIATION,
	}
}

// insertEvents stores events the way the platform connector does: InsertMany of
// model.HealthEventWithStatus documents through the health events client.
func (h *harness) insertEvents(ctx context.Context, events ...*protos.HealthEvent) error {
	docs := make([]any, 0, len(events))
	for _, event := range events {
		docs = append(docs, model.HealthEventWithStatus{
			CreatedAt:         time.Now().UTC(),
			HealthEvent:       event,
			HealthEventStatus: &protos.HealthEventStatus{},
		})
	}

	if _, err := h.healthClient.InsertMany(ctx, docs); err != nil {
		return fmt.Errorf("InsertMany: %w", err)
	}

	return nil
}

// insert stores one event and returns its row id, which services learn from
// the change stream (GetRecordUUID) and use for every status update.
func (h *harness) insert(ctx context.Context, event *protos.HealthEvent) (string, error) {
	if err := h.insertEvents(ctx, event); err != nil {
		return "", err
	}

	return h.idByKey(ctx, idempotencyKey(event))
}

func (h *harness) insertOnNode(ctx context.Context, node string) (string, error) {
	return h.insert(ctx, h.healthEvent(node))
}

func idempotencyKey(event *protos.HealthEvent) string {
	return event.GetMetadata()[datastore.HealthEventIdempotencyKeyMetadataField]
}

func (h *harness) idByKey(ctx context.Context, key string) (string, error) {
	var id string

	err := h.db.QueryRowContext(ctx,
		`SELECT id::text FROM health_events WHERE document #>> '{healthevent,metadata,idempotencyKey}' = $1`,
		key).Scan(&id)
	if err != nil {
		return "", fmt.Errorf("reading back the row with idempotency key %s: %w", key, err)
	}

	return id, nil
}

// docText reads one field of a stored health event document as text (NULL as "").
func (h *harness) docText(ctx context.Context, id string, path ...string) (string, error) {
	var value sql.NullString

	err := h.db.QueryRowContext(ctx,
		`SELECT document #>> $2::text[] FROM health_events WHERE id = $1::uuid`,
		id, pq.Array(path)).Scan(&value)
	if err != nil {
		return "", fmt.Errorf("reading document %s of %s: %w", strings.Join(path, "."), id, err)
	}

	return value.String, nil
}

// columnText reads one column of a stored health event as text (NULL as "").
// The column names are constants of this program, never input.
func (h *harness) columnText(ctx context.Context, id, column string) (string, error) {
	var value sql.NullString

	//nolint:gosec // column is one of this program's constants
	query := fmt.Sprintf(`SELECT %s::text FROM health_events WHERE id = $1::uuid`, column)
	if err := h.db.QueryRowContext(ctx, query, id).Scan(&value); err != nil {
		return "", fmt.Errorf("reading column %s of %s: %w", column, id, err)
	}

	return value.String, nil
}

// checks collects every mismatch of a case, so one run shows all of them.
type checks struct {
	failures []string
}

func (c *checks) equal(what string, got, want any) {
	if fmt.Sprint(got) != fmt.Sprint(want) {
		c.failures = append(c.failures, fmt.Sprintf("%s: got %v, want %v", what, got, want))
	}
}

func (c *checks) that(ok bool, format string, args ...any) {
	if !ok {
		c.failures = append(c.failures, fmt.Sprintf(format, args...))
	}
}

// read records a failed verification read as a mismatch and returns the value.
func (c *checks) read(value string, err error) string {
	if err != nil {
		c.failures = append(c.failures, err.Error())
	}

	return value
}

func (c *checks) err() error {
	if len(c.failures) == 0 {
		return nil
	}

	return errors.New(strings.Join(c.failures, "; "))
}
