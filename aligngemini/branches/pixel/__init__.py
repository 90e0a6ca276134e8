"""pixel"""
