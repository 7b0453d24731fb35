/* Tiled, big-endian and predictor TIFFs written by libtiff itself (Pillow
 * writes strips only):  cc mklibtiff.c -ltiff -o /tmp/mk && /tmp/mk  */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <tiffio.h>

static void write(const char *name, const char *mode, int spp, int bps, int comp, int pred, int tiled) {
	const int w = 61, h = 43, tw = 16, th = 32;
	TIFF *t = TIFFOpen(name, mode);
	TIFFSetField(t, TIFFTAG_IMAGEWIDTH, w);
	TIFFSetField(t, TIFFTAG_IMAGELENGTH, h);
	TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, spp);
	TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, bps);
	TIFFSetField(t, TIFFTAG_PHOTOMETRIC, spp >= 3 ? PHOTOMETRIC_RGB : PHOTOMETRIC_MINISBLACK);
	TIFFSetField(t, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG);
	TIFFSetField(t, TIFFTAG_COMPRESSION, comp);
	if (pred) TIFFSetField(t, TIFFTAG_PREDICTOR, PREDICTOR_HORIZONTAL);
	int px = spp * bps / 8;
	unsigned char *img = malloc(w * h * px);
	for (int i = 0; i < w * h * px; i++) img[i] = (unsigned char)((i * 37) ^ (i / 7) ^ (i % 61 * 3));
	if (tiled) {
		TIFFSetField(t, TIFFTAG_TILEWIDTH, tw);
		TIFFSetField(t, TIFFTAG_TILELENGTH, th);
		unsigned char *tile = malloc(tw * th * px);
		for (int y0 = 0; y0 < h; y0 += th)
			for (int x0 = 0; x0 < w; x0 += tw) {
				memset(tile, 0, tw * th * px);
				for (int y = 0; y < th && y0 + y < h; y++)
					for (int x = 0; x < tw && x0 + x < w; x++)
						memcpy(tile + (y * tw + x) * px, img + ((y0 + y) * w + x0 + x) * px, px);
				TIFFWriteTile(t, tile, x0, y0, 0, 0);
			}
		free(tile);
	} else {
		TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, 5);
		for (int y = 0; y < h; y++) TIFFWriteScanline(t, img + y * w * px, y, 0);
	}
	TIFFClose(t);
	free(img);
}

int main(void) {
	write("libtiff-be-grey16-lzw-predictor.tif", "wb", 1, 16, COMPRESSION_LZW, 1, 0);
	write("libtiff-be-rgb-tiled-deflate.tif", "wb", 3, 8, COMPRESSION_ADOBE_DEFLATE, 0, 1);
	write("libtiff-le-grey16-tiled-lzw-predictor.tif", "wl", 1, 16, COMPRESSION_LZW, 1, 1);
	write("libtiff-le-rgb16-packbits.tif", "wl", 3, 16, COMPRESSION_PACKBITS, 0, 0);
	write("libtiff-be-grey-tiled-none.tif", "wb", 1, 8, COMPRESSION_NONE, 0, 1);
	return 0;
}
