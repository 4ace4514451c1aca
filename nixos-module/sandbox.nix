# The units' sandbox, read from systemd/sandbox.conf: the lines the Debian units carry inline, so
# that a hardening change is made in one file (scripts/check-units.sh holds the Debian units to
# it). A setting given once is a string, one given on several lines a list, as systemd reads them.
{ lib }:

let
  conf = ../systemd/sandbox.conf;
  lines = builtins.filter (line: line != "" && !(lib.hasPrefix "#" line))
    (lib.splitString "\n" (builtins.readFile conf));
  setting = line:
    let parsed = builtins.match "([A-Za-z]+)=(.*)" line; in
    if parsed == null then throw "${toString conf}: `${line}` is not a Key=value setting"
    else { name = builtins.elemAt parsed 0; value = builtins.elemAt parsed 1; };
  byName = builtins.groupBy (s: s.name) (map setting lines);
in
builtins.mapAttrs (_: settings:
  if builtins.length settings == 1 then (builtins.head settings).value
  else map (s: s.value) settings) byName
