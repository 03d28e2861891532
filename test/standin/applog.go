package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// appLogPrefixes are the application log prefixes of the Deephaven
// services the stand-in plays (Deephaven's operations guide); another
// name is its own prefix.
var appLogPrefixes = map[string]string{
	"configuration_server":   "ConfigurationServer",
	"authentication_server":  "AuthenticationServer",
	"db_acl_write_server":    "DbAclWriteServer",
	"iris_controller":        "PersistentQueryController",
	"log_aggregator_service": "LogAggregatorService",
	"tailer1":                "LogtailerMain",
	"db_query_server":        "RemoteQueryDispatcher",
	"db_merge_server":        "RemoteQueryDispatcher",
	"db_ltds":                "LocalTableDataServer",
	"db_tdcp":                "TableDataCacheProxy",
	"web_api_service":        "WebServer",
	"db_dis":                 "DataImportServer",
}

// Lifecycle events a Deephaven JVM logs.
const (
	lifecycleInitializing = "INITIALIZING"
	lifecycleRunning      = "RUNNING"
)

// lifecycle logs "<name> EVENT" to the application log as a Deephaven
// JVM does: a file named for the process's start, hard-linked as
// <Prefix>.log.current when it is created.
func (s *service) lifecycle(event string) {
	dir := s.cfg.appLog
	if dir == "" {
		return
	}
	// A dev cluster names its stand-ins node/service.
	service := s.cfg.name[strings.LastIndex(s.cfg.name, "/")+1:]
	prefix := appLogPrefixes[service]
	if prefix == "" {
		prefix = service
	}
	name := filepath.Join(dir, prefix+".log."+s.started.Format("2006-01-02-150405.000-0700"))
	err := os.MkdirAll(dir, 0o755)
	var f *os.File
	if err == nil {
		f, err = os.OpenFile(name, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	}
	if err == nil {
		_, err = fmt.Fprintf(f, "[%s] INFO %s %s\n", time.Now().Format("2006-01-02 15:04:05.000"), s.cfg.name, event)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil && event == lifecycleInitializing {
		current := filepath.Join(dir, prefix+".log.current")
		_ = os.Remove(current)
		err = os.Link(name, current)
	}
	if err != nil {
		s.log.Printf("application log %s: %v", event, err)
	}
}
