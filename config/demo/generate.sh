#!/usr/bin/env bash
# Regenerates segd's demo corpus: two ~20 s audio tracks, each as
#   HLS with MPEG-TS segments (multi-bitrate master: 64k + 128k AAC),
#   HLS with fMP4 segments   (same renditions, EXT-X-MAP init segment),
#   DASH                     (one MPD, one adaptation set, two representations).
# Track t1 lives on volume disk1 and t2 on disk2, so the demo exercises multi-volume lookup.
# Usage: config/demo/generate.sh            (needs ffmpeg; writes under config/demo/disk{1,2})
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
command -v ffmpeg >/dev/null || { echo "generate.sh: ffmpeg not found (apt-get install ffmpeg)" >&2; exit 1; }

# Two synthetic tracks: deterministic, royalty-free, and recognisably different by ear.
declare -A src
src[t1]="aevalsrc=0.25*sin(2*PI*220*t)*(0.6+0.4*sin(2*PI*2*t))+0.2*sin(2*PI*277.18*t)+0.15*sin(2*PI*329.63*t):s=48000:d=20"
src[t2]="aevalsrc=0.3*sin(2*PI*(330+110*floor(mod(t\,4)))*t)*exp(-3*mod(t\,0.5))+0.1*sin(2*PI*55*t):s=48000:d=20"
declare -A disk=([t1]=disk1 [t2]=disk2)

common=(-hide_banner -loglevel error -y)
out_opts=(-map_metadata -1 -fflags +bitexact)
for t in t1 t2; do
  out="$here/${disk[$t]}/vod/$t"
  rm -rf "$out"; mkdir -p "$out/hls" "$out/fmp4" "$out/dash"
  split="[0:a]aformat=channel_layouts=stereo,asplit=2[lo][hi]"

  ffmpeg "${common[@]}" -f lavfi -i "${src[$t]}" -filter_complex "$split" \
    -map "[lo]" -map "[hi]" -c:a aac -b:a:0 64k -b:a:1 128k -flags:a +bitexact "${out_opts[@]}" \
    -f hls -hls_time 4 -hls_playlist_type vod -hls_flags independent_segments \
    -hls_segment_filename "$out/hls/%v/seg_%05d.ts" \
    -master_pl_name master.m3u8 -var_stream_map "a:0,name:64k a:1,name:128k" \
    "$out/hls/%v/index.m3u8"

  ffmpeg "${common[@]}" -f lavfi -i "${src[$t]}" -filter_complex "$split" \
    -map "[lo]" -map "[hi]" -c:a aac -b:a:0 64k -b:a:1 128k -flags:a +bitexact "${out_opts[@]}" \
    -f hls -hls_time 4 -hls_playlist_type vod -hls_flags independent_segments \
    -hls_segment_type fmp4 -hls_fmp4_init_filename init.mp4 \
    -hls_segment_filename "$out/fmp4/%v/seg_%05d.m4s" \
    -master_pl_name master.m3u8 -var_stream_map "a:0,name:64k a:1,name:128k" \
    "$out/fmp4/%v/index.m3u8"

  ( cd "$out/dash" && ffmpeg "${common[@]}" -f lavfi -i "${src[$t]}" -filter_complex "$split" \
    -map "[lo]" -map "[hi]" -c:a aac -b:a:0 64k -b:a:1 128k -flags:a +bitexact "${out_opts[@]}" \
    -f dash -seg_duration 4 -use_template 1 -use_timeline 0 \
    -init_seg_name 'init-$RepresentationID$.m4s' \
    -media_seg_name 'chunk-$RepresentationID$-$Number%05d$.m4s' \
    -adaptation_sets "id=0,streams=a" manifest.mpd )
done
du -sh "$here/disk1" "$here/disk2"
