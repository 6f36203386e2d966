// Command ferretdb runs FerretDB (a MongoDB wire-protocol server on a PostgreSQL
// or SQLite backend) through its embeddable package, as a stand-in for MongoDB
// reads and writes in the datastore tests. FerretDB has no change streams.
//
// FerretDB's own command panics unless it was built from its git checkout (it
// embeds a generated version file); the embeddable package has no such need.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	var cfg ferretdb.Config
	flag.StringVar(&cfg.Listener.TCP, "listen-addr", "", "plain TCP address (host:port); empty for none")
	flag.StringVar(&cfg.Listener.TLS, "listen-tls", "", "TLS address (host:port); empty for none")
	flag.StringVar(&cfg.Listener.TLSCertFile, "listen-tls-cert-file", "", "server certificate (PEM)")
	flag.StringVar(&cfg.Listener.TLSKeyFile, "listen-tls-key-file", "", "server key (PEM)")
	flag.StringVar(&cfg.Listener.TLSCAFile, "listen-tls-ca-file", "", "CA for client certificates (PEM); set to require them")
	flag.StringVar(&cfg.Handler, "handler", "postgresql", "backend: postgresql or sqlite")
	flag.StringVar(&cfg.PostgreSQLURL, "postgresql-url", "", "PostgreSQL backend URL (handler postgresql)")
	flag.StringVar(&cfg.SQLiteURL, "sqlite-url", "", "SQLite backend directory URI, e.g. file:/tmp/data/ (handler sqlite)")
	flag.Parse()
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

	server, err := ferretdb.New(&cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ferretdb:", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Fprintln(os.Stderr, "ferretdb: listening on", server.MongoDBURI())
	if err := server.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "ferretdb:", err)
		os.Exit(1)
	}
}
