package main

// These tests check gentool the way an importer gets it: from a module
// proxy, at a release version, with none of the repository's go.work
// to lean on. A replace directive or an unpublished version slips past
// every in-repo build (go.work resolves gocoll's modules to the working
// tree) and breaks only for users, so only a build from a proxy sees it.

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
	"golang.org/x/mod/zip"
)

const (
	rootModule    = "github.com/gocoll/gocoll"
	genModule     = "github.com/gocoll/gocoll/gen"
	gentoolModule = "github.com/gocoll/gocoll/cmd/gentool"

	// downstreamDir is the example consumer, relative to the repository
	// root: the install test rebuilds it from its spec and hand-written
	// files in a fresh module.
	downstreamDir = "examples/downstream"
)

// published lists the modules tagged together at each release (tags vX,
// gen/vX and cmd/gentool/vX on one commit), with their directories
// relative to the repository root.
var published = []struct{ path, dir string }{
	{rootModule, "."},
	{genModule, "gen"},
	{gentoolModule, "cmd/gentool"},
}

// TestReleaseVersionsAgree checks the release rule in the files that
// encode it: gentool requires gen at the release version, the example
// consumer requires gocoll's modules at that same version, no go.mod has a
// replace directive (an importer ignores them, and go install refuses a
// module that has one), and go.work maps exactly that version of each
// published module to its directory, so that in-repo builds never fetch it.
func TestReleaseVersionsAgree(t *testing.T) {
	repo := repoRoot(t)
	version := releaseVersion(t, repo)
	hint := "every gocoll version must move together: see README.md, Releasing"

	for _, m := range published {
		f := readModFile(t, filepath.Join(repo, m.dir, "go.mod"))
		if f.Module == nil || f.Module.Mod.Path != m.path {
			t.Errorf("%s/go.mod: module is not %s", m.dir, m.path)
		}
		checkModFile(t, m.dir, f, version, hint)
	}

	f := readModFile(t, filepath.Join(repo, downstreamDir, "go.mod"))
	checkModFile(t, downstreamDir, f, version, hint)
	for _, want := range []string{rootModule, gentoolModule} {
		if !requires(f, want) {
			t.Errorf("%s/go.mod does not require %s", downstreamDir, want)
		}
	}
	if !hasTool(f, gentoolModule) {
		t.Errorf("%s/go.mod has no tool directive for %s", downstreamDir, gentoolModule)
	}

	// The READMEs show the commands a user types, at the release version.
	for _, readme := range []string{"README.md", downstreamDir + "/README.md"} {
		data, err := os.ReadFile(filepath.Join(repo, readme))
		if err != nil {
			t.Fatal(err)
		}
		found := readmeVersion.FindAllSubmatch(data, -1)
		if len(found) == 0 {
			t.Errorf("%s shows no go get command at a version of gocoll's modules", readme)
		}
		for _, m := range found {
			if string(m[2]) != version {
				t.Errorf("%s installs %s@%s, want @%s; %s", readme, m[1], m[2], version, hint)
			}
		}
	}

	data, err := os.ReadFile(filepath.Join(repo, "go.work"))
	if err != nil {
		t.Fatalf("in-repo builds resolve gocoll's modules through go.work: %v", err)
	}
	work, err := modfile.ParseWork("go.work", data, nil)
	if err != nil {
		t.Fatal(err)
	}
	uses := map[string]bool{}
	for _, u := range work.Use {
		uses[filepath.Clean(u.Path)] = true
	}
	replaced := map[string]*modfile.Replace{}
	for _, r := range work.Replace {
		replaced[r.Old.Path] = r
	}
	for _, dir := range []string{".", "gen", "cmd/gentool", downstreamDir} {
		if !uses[filepath.Clean(dir)] {
			t.Errorf("go.work does not use ./%s", dir)
		}
	}
	for _, m := range published {
		r := replaced[m.path]
		switch {
		case r == nil:
			t.Errorf("go.work does not replace %s@%s: in-repo builds would fetch it", m.path, version)
		case r.Old.Version != version:
			// Unversioned, go rejects the replacement of a workspace
			// module; at another version it leaves the release's
			// version to be fetched.
			t.Errorf("go.work replaces %s at %q, want %s; %s", m.path, r.Old.Version, version, hint)
		case filepath.Clean(r.New.Path) != filepath.Clean(m.dir) || r.New.Version != "":
			t.Errorf("go.work replaces %s with %s %s, want ./%s", m.path, r.New.Path, r.New.Version, m.dir)
		}
	}
}

// readmeVersion matches a gocoll module path at a version, as go get takes it.
var readmeVersion = regexp.MustCompile(`(github\.com/gocoll/gocoll[\w/]*)@(\S+)`)

// TestInstallFromProxy installs gentool as a user would, offline: it
// serves the working tree's three published modules at the release
// version from a file-system proxy, chains the local module cache behind
// it for third-party modules, and in a fresh module outside the
// repository runs the commands examples/downstream/README.md gives, over
// the example's spec and hand-written files. The generated code must match
// what the example commits, and build and pass its tests.
//
// The third-party modules gocoll needs must already be in the module cache
// (go mod download at the repository root, as .ci/run does).
func TestInstallFromProxy(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go command is not on PATH: this test runs it to install gentool from a proxy")
	}
	repo := repoRoot(t)
	version := releaseVersion(t, repo)

	proxy := t.TempDir()
	for _, m := range published {
		writeProxyModule(t, proxy, m.path, version, filepath.Join(repo, m.dir))
	}
	out, err := exec.Command(goBin, "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatalf("go env GOMODCACHE: %v", err)
	}
	cache := filepath.Join(strings.TrimSpace(string(out)), "cache", "download")

	example := filepath.Join(repo, downstreamDir)
	mod := filepath.Join(t.TempDir(), "downstream")
	generated := copyHandWritten(t, example, mod)
	if len(generated) == 0 {
		t.Fatalf("%s has no generated files to compare with", downstreamDir)
	}

	env := append(os.Environ(),
		// The fresh module stands alone, as a user's does.
		"GOWORK=off",
		// Nothing reaches the network: gocoll's modules come from the
		// proxy just built, all others from the local cache.
		"GOPROXY="+fileURL(proxy)+","+fileURL(cache),
		"GOPRIVATE=", "GONOPROXY=", "GOTOOLCHAIN=local",
		// No checksum database knows the working tree's zips; the
		// cache's modules were checked when they were downloaded.
		"GOSUMDB=off", "GONOSUMDB=",
		// A module cache of its own: one shared with the user's would
		// keep this working tree's gocoll@version for later runs and
		// builds to find. -modcacherw lets t.TempDir remove it, and
		// -trimpath keeps build cache keys free of its path, so that
		// third-party packages compiled once stay cached across runs.
		"GOMODCACHE="+filepath.Join(t.TempDir(), "modcache"),
		"GOFLAGS=-modcacherw -trimpath",
	)
	goCmd := func(args ...string) {
		t.Helper()
		cmd := exec.Command(goBin, args...)
		cmd.Dir, cmd.Env = mod, env
		start := time.Now()
		out, err := cmd.CombinedOutput()
		if err != nil {
			hint := ""
			if bytes.Contains(out, []byte(fileURL(cache))) {
				hint = "\nthird-party modules must be in the module cache: run go mod download at the repository root"
			}
			t.Fatalf("go %s: %v\n%s%s", strings.Join(args, " "), err, out, hint)
		}
		t.Logf("go %s (%v)", strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
	}

	modPath := readModFile(t, filepath.Join(example, "go.mod")).Module.Mod.Path
	goCmd("mod", "init", modPath)
	// The commands of examples/downstream/README.md, in its order.
	goCmd("get", "-tool", gentoolModule+"@"+version)
	goCmd("get", rootModule+"@"+version)
	goCmd("generate", "./...")
	goCmd("mod", "tidy")
	goCmd("build", "./...")
	goCmd("test", "./...")

	for _, rel := range generated {
		want, err := os.ReadFile(filepath.Join(example, rel))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(mod, rel))
		if err != nil {
			t.Errorf("installed gentool did not write %s: %v", rel, err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("installed gentool wrote %s unlike %s's copy: run go generate there and commit the result", rel, downstreamDir)
		}
	}
	extra := walkGenerated(t, mod)
	for _, rel := range extra {
		if !slices.Contains(generated, rel) {
			t.Errorf("installed gentool wrote %s, which %s does not have", rel, downstreamDir)
		}
	}
}

// writeProxyModule writes version of the module at dir into proxy in the
// GOPROXY protocol's file layout: @v/list, .info, .mod and .zip.
func writeProxyModule(t *testing.T, proxy, path, version, dir string) {
	t.Helper()
	escPath, err := module.EscapePath(path)
	if err != nil {
		t.Fatal(err)
	}
	escVersion, err := module.EscapeVersion(version)
	if err != nil {
		t.Fatal(err)
	}
	vdir := filepath.Join(proxy, filepath.FromSlash(escPath), "@v")
	if err := os.MkdirAll(vdir, 0o755); err != nil {
		t.Fatal(err)
	}
	gomod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	info, err := json.Marshal(struct {
		Version string
		Time    time.Time
	}{version, time.Now().UTC().Truncate(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"list":               []byte(version + "\n"),
		escVersion + ".info": info,
		escVersion + ".mod":  gomod,
	} {
		if err := os.WriteFile(filepath.Join(vdir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Create(filepath.Join(vdir, escVersion+".zip"))
	if err != nil {
		t.Fatal(err)
	}
	// CreateFromDir leaves out nested modules, so the root's zip holds
	// neither gen/ nor cmd/gentool/, just as a VCS-built zip would not.
	err = zip.CreateFromDir(f, module.Version{Path: path, Version: version}, dir)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("zipping %s@%s from %s: %v", path, version, dir, err)
	}
}

// copyHandWritten copies src to dst without its go.mod, go.sum and
// generated files, and returns the generated files' slash-separated paths.
func copyHandWritten(t *testing.T, src, dst string) (generated []string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if rel == "go.mod" || rel == "go.sum" || !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if isGenerated(data) {
			generated = append(generated, filepath.ToSlash(rel))
			return nil
		}
		return os.WriteFile(target, data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return generated
}

// walkGenerated returns the slash-separated paths of dir's generated files.
func walkGenerated(t *testing.T, dir string) (generated []string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if isGenerated(data) {
			rel, err := filepath.Rel(dir, path)
			if err != nil {
				return err
			}
			generated = append(generated, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return generated
}

// generatedHeader is Go's convention for a generated file's marker
// (go.dev/s/generatedcode), which gentool writes on the first line of
// every file, Go and assembly alike.
var generatedHeader = regexp.MustCompile(`^// Code generated .* DO NOT EDIT\.$`)

func isGenerated(data []byte) bool {
	first, _, _ := bytes.Cut(data, []byte("\n"))
	return generatedHeader.Match(bytes.TrimSuffix(first, []byte("\r")))
}

// repoRoot returns the repository root: this package is cmd/gentool.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if f := readModFile(t, filepath.Join(root, "go.mod")); f.Module == nil || f.Module.Mod.Path != rootModule {
		t.Fatalf("%s is not %s's root", root, rootModule)
	}
	return root
}

// releaseVersion returns the version gentool requires gen at: by the
// release rule, the version all of gocoll's modules are tagged at next.
func releaseVersion(t *testing.T, repo string) string {
	t.Helper()
	f := readModFile(t, filepath.Join(repo, "cmd", "gentool", "go.mod"))
	for _, r := range f.Require {
		if r.Mod.Path != genModule {
			continue
		}
		v := r.Mod.Version
		if !semver.IsValid(v) || semver.Canonical(v) != v || module.IsPseudoVersion(v) {
			t.Fatalf("cmd/gentool/go.mod requires %s at %s: want the release's tag version, vX.Y.Z", genModule, v)
		}
		return v
	}
	t.Fatalf("cmd/gentool/go.mod does not require %s", genModule)
	return ""
}

// checkModFile reports a replace directive in f, or a requirement on one of
// the published modules at another version than version.
func checkModFile(t *testing.T, dir string, f *modfile.File, version, hint string) {
	t.Helper()
	for _, r := range f.Replace {
		t.Errorf("%s/go.mod replaces %s: importers ignore it and go install refuses it; go.work maps gocoll's modules to the working tree", dir, r.Old.Path)
	}
	for _, r := range f.Require {
		for _, m := range published {
			if r.Mod.Path == m.path && r.Mod.Version != version {
				t.Errorf("%s/go.mod requires %s at %s, want %s; %s", dir, m.path, r.Mod.Version, version, hint)
			}
		}
	}
}

func readModFile(t *testing.T, path string) *modfile.File {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := modfile.Parse(path, data, nil)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func requires(f *modfile.File, path string) bool {
	for _, r := range f.Require {
		if r.Mod.Path == path {
			return true
		}
	}
	return false
}

func hasTool(f *modfile.File, path string) bool {
	for _, tool := range f.Tool {
		if tool.Path == path {
			return true
		}
	}
	return false
}

// fileURL is dir as a file:// URL, the form GOPROXY takes a local proxy in.
func fileURL(dir string) string {
	return (&url.URL{Scheme: "file", Path: filepath.ToSlash(dir)}).String()
}
