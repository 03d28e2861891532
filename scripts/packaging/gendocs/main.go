// Command gendocs writes dhctl's man pages (gzipped, section 1) and shell
// completions (bash, zsh, fish) into a directory, for the packages. It is
// what `make packages` runs; the pages come from the commands' own help.
//
//	go run ./scripts/packaging/gendocs --out DIR --version V
package main

import (
	"bytes"
	"compress/gzip"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"

	"github.com/dhvisor/dhvisor/internal/ctl"
)

func main() {
	out := flag.String("out", "", "directory to write man/ and completions/ into")
	version := flag.String("version", "dev", "dhvisor version, for the man pages' footer")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "gendocs: --out is required")
		os.Exit(2)
	}
	if err := run(*out, *version); err != nil {
		fmt.Fprintln(os.Stderr, "gendocs:", err)
		os.Exit(1)
	}
}

func run(out, version string) error {
	root := ctl.NewRoot(io.Discard, io.Discard)
	root.DisableAutoGenTag = true // no build date: the package is reproducible
	manDir := filepath.Join(out, "man")
	if err := os.MkdirAll(manDir, 0o755); err != nil {
		return err
	}
	raw, err := os.MkdirTemp("", "dhctl-man")
	if err != nil {
		return err
	}
	defer os.RemoveAll(raw)
	header := &doc.GenManHeader{Title: "DHCTL", Section: "1", Source: "dhvisor " + version, Manual: "dhvisor Manual"}
	if err := doc.GenManTree(root, header, raw); err != nil {
		return err
	}
	pages, err := os.ReadDir(raw)
	if err != nil {
		return err
	}
	for _, p := range pages {
		if err := gzipFile(filepath.Join(raw, p.Name()), filepath.Join(manDir, p.Name()+".gz")); err != nil {
			return err
		}
	}
	comp := filepath.Join(out, "completions")
	if err := os.MkdirAll(comp, 0o755); err != nil {
		return err
	}
	for name, gen := range map[string]func(*cobra.Command, io.Writer) error{
		"dhctl.bash": func(c *cobra.Command, w io.Writer) error { return c.GenBashCompletionV2(w, true) },
		"_dhctl":     func(c *cobra.Command, w io.Writer) error { return c.GenZshCompletion(w) },
		"dhctl.fish": func(c *cobra.Command, w io.Writer) error { return c.GenFishCompletion(w, true) },
	} {
		var b bytes.Buffer
		if err := gen(root, &b); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if err := os.WriteFile(filepath.Join(comp, name), b.Bytes(), 0o644); err != nil {
			return err
		}
	}
	fmt.Printf("gendocs: %d man pages, 3 completions in %s\n", len(pages), strings.TrimSuffix(out, "/"))
	return nil
}

// gzipFile compresses src into dst without a name or time in the header,
// so the same page always gives the same bytes.
func gzipFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	zw, err := gzip.NewWriterLevel(f, gzip.BestCompression)
	if err != nil {
		f.Close()
		return err
	}
	if _, err := zw.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := zw.Close(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
